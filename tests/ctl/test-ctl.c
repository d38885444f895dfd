/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl end to end against vbdd-sim daemons in a simulated Xen:
 *   list with two daemons; pause under load (nothing served while paused,
 *   nothing lost or answered twice, data checked); resume; reopen (and its image locks,
 *   onto the cbt filter); stats
 *   (JSON, Prometheus); log-level; detach while busy; attach + detach
 *   --xenstore as the toolstack; the control socket's hostile-input limits
 *   (malformed, oversized, nested JSON, too many clients); connections from
 *   a non-root user refused (file mode, then SO_PEERCRED).
 * test-ctl reopen-nbd: reopen beside the daemon's own --nbd export (a libnbd
 *   client across the reopen, new clients, the guest, writes, another size).
 *
 * Needs VBD_SIM_VBDD (vbdd-sim) and VBD_CTL (vbd-ctl); meson sets both.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenstore.h>

#include "check.h"
#include "simfront.h"
#include "vbd/time.h"

#define DEVID    51712
#define IMG_SIZE (8u << 20)
#define BLOCK    4096u
#define NBLOCKS  (IMG_SIZE / BLOCK)
#define MAX_TAGS (1u << 20)

static const char *cur_test = "";
static struct simfront_vbd *cur_vbd;
static const char *vbd_ctl, *vbdd_sim;
static char ctl_dir[512];

/* After a failed check (check.h; they are fatal here): which test, and the
 * daemon's log. */
static void check_context_vbd(int err)
{
        fprintf(stderr, "FAIL %s\n", cur_test);
        if (cur_vbd) {
                char *log = simfront_vbd_read_log(cur_vbd);

                fprintf(stderr, "--- vbdd log ---\n%s--- end ---\n", log ? log : "(none)");
                free(log);
        }
}

/* ---- running vbd-ctl ---- */

struct out {
        int status; /* exit code, or 128 + signal */
        char out[1 << 18];
        char err[1 << 14];
};

#define NOBODY  65534
#define VBD_BIG (200 * 1024)

static void drop_privileges(void)
{
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
                _exit(126);
}

/* Fork + exec; the child's stdout and stderr come back through pipes. */
static pid_t spawn(const char *const *argv, bool nobody, int *ret_out, int *ret_err)
{
        int o[2], e[2];
        pid_t pid;

        CHECK_MSG(pipe2(o, O_CLOEXEC) == 0 && pipe2(e, O_CLOEXEC) == 0, "pipe: %m");
        pid = fork();
        CHECK_MSG(pid >= 0, "fork: %m");
        if (pid == 0) {
                dup2(o[1], 1);
                dup2(e[1], 2);
                if (nobody)
                        drop_privileges();
                execv(argv[0], (char *const *)argv);
                _exit(127);
        }
        close(o[1]);
        close(e[1]);
        *ret_out = o[0];
        *ret_err = e[0];
        return pid;
}

static void collect(pid_t pid, int ofd, int efd, struct out *r)
{
        size_t on = 0, en = 0;
        struct pollfd p[2] = {{.fd = ofd, .events = POLLIN}, {.fd = efd, .events = POLLIN}};
        int st, open_fds = 2;

        while (open_fds) {
                CHECK_MSG(poll(p, 2, 60000) > 0, "vbd-ctl hangs");
                for (int i = 0; i < 2; i++) {
                        char *buf = i ? r->err : r->out;
                        size_t *n = i ? &en : &on, cap = i ? sizeof(r->err) : sizeof(r->out);
                        ssize_t k;

                        if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP)))
                                continue;
                        k = read(p[i].fd, buf + *n, cap - 1 - *n);
                        if (k <= 0) {
                                close(p[i].fd);
                                p[i].fd = -1;
                                open_fds--;
                                continue;
                        }
                        *n += (size_t)k;
                }
        }
        r->out[on] = r->err[en] = '\0';
        CHECK_MSG(waitpid(pid, &st, 0) == pid, "waitpid: %m");
        r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void build_argv(const char **argv, size_t max, va_list ap)
{
        size_t n = 0;
        const char *a;

        argv[n++] = vbd_ctl;
        argv[n++] = "--ctl-dir";
        argv[n++] = ctl_dir;
        while ((a = va_arg(ap, const char *)) && n < max - 1)
                argv[n++] = a;
        argv[n] = NULL;
}

/* vbd-ctl --ctl-dir DIR args... NULL */
static struct out *ctl_as(bool nobody, ...)
{
        static struct out r;
        const char *argv[48];
        int o, e;
        pid_t pid;
        va_list ap;

        va_start(ap, nobody);
        build_argv(argv, 48, ap);
        va_end(ap);
        pid = spawn(argv, nobody, &o, &e);
        collect(pid, o, e, &r);
        return &r;
}
#define ctl(...) ctl_as(false, __VA_ARGS__, NULL)

static json_t *ctl_json(int want_status, const char *what, struct out *r)
{
        json_error_t je;
        json_t *j;

        CHECK_MSG(r->status == want_status, "%s: exit %d, want %d; stderr: %s; stdout: %s", what,
                  r->status, want_status, r->err, r->out);
        j = json_loads(r->out, 0, &je);
        CHECK_MSG(j, "%s: stdout is not JSON (%s): %s", what, je.text, r->out);
        return j;
}

static long long jint(json_t *o, const char *path)
{
        char buf[256], *save, *tok;

        snprintf(buf, sizeof(buf), "%s", path);
        for (tok = strtok_r(buf, ".", &save); tok && o; tok = strtok_r(NULL, ".", &save))
                o = json_object_get(o, tok);
        CHECK_MSG(json_is_integer(o), "no integer at %s", path);
        return json_integer_value(o);
}

static const char *jstr(json_t *o, const char *key)
{
        const char *s = json_string_value(json_object_get(o, key));

        return s ? s : "";
}

/* ---- the guest's load: 4 KiB writes, one per block at a time ---- */

struct load {
        struct simfront *fe;
        uint32_t gen[NBLOCKS];     /* last completed write's generation, 0: none */
        uint32_t pending[NBLOCKS]; /* generation of the write in flight, 0: none */
        uint8_t *done;             /* per tag: completions seen */
        uint64_t issued, completed, errors;
        uint32_t next_gen;
        unsigned rnd;
};

static void fill(void *buf, uint32_t block, uint32_t gen)
{
        uint64_t *p = buf;

        for (unsigned i = 0; i < BLOCK / 8; i++)
                p[i] = ((uint64_t)block << 40) ^ ((uint64_t)gen << 12) ^ i;
}

static void load_done(struct simfront *fe, struct simfront_io *io)
{
        struct load *l = io->opaque;
        uint32_t block = (uint32_t)(io->offset / BLOCK);

        CHECK_MSG(io->tag < l->issued, "completion for a tag never issued: %" PRIu64, io->tag);
        CHECK_MSG(l->done[io->tag] == 0, "tag %" PRIu64 " completed twice", io->tag);
        l->done[io->tag] = 1;
        l->completed++;
        if (io->status != BLKIF_RSP_OKAY) {
                l->errors++;
        } else {
                l->gen[block] = l->pending[block];
        }
        l->pending[block] = 0;
}

/* Queue writes while slots are free (at most max in flight); push. */
static unsigned load_fill(struct load *l, unsigned max)
{
        unsigned queued = 0;
        char buf[BLOCK];

        while (simfront_inflight(l->fe) < max && l->issued < MAX_TAGS) {
                struct simfront_io *io;
                uint32_t block;

                do {
                        l->rnd = l->rnd * 1103515245u + 12345u;
                        block = (l->rnd >> 8) % NBLOCKS;
                } while (l->pending[block]);
                io = simfront_io_get(l->fe);
                if (!io)
                        break;
                io->op = BLKIF_OP_WRITE;
                io->offset = (uint64_t)block * BLOCK;
                io->len = BLOCK;
                io->done = load_done;
                io->opaque = l;
                io->tag = l->issued++;
                l->pending[block] = ++l->next_gen;
                fill(buf, block, l->pending[block]);
                simfront_io_copy_in(io, 0, buf, BLOCK);
                CHECK_R(simfront_io_queue(l->fe, io), simfront_errmsg(l->fe));
                queued++;
        }
        if (queued)
                CHECK_R(simfront_push(l->fe), simfront_errmsg(l->fe));
        return queued;
}

static void load_verify_image(struct load *l, const char *img, bool skip_pending)
{
        int fd = open(img, O_RDONLY);
        char want[BLOCK], got[BLOCK];

        CHECK_MSG(fd >= 0, "open %s: %m", img);
        for (uint32_t b = 0; b < NBLOCKS; b++) {
                if (!l->gen[b] || (skip_pending && l->pending[b]))
                        continue;
                CHECK_MSG(pread(fd, got, BLOCK, (off_t)b * BLOCK) == BLOCK, "pread: %m");
                fill(want, b, l->gen[b]);
                CHECK_MSG(memcmp(want, got, BLOCK) == 0, "block %u lacks write generation %u", b,
                          l->gen[b]);
        }
        close(fd);
}

static void make_image(const char *path, uint64_t size, char byte)
{
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        char buf[65536];

        CHECK_MSG(fd >= 0, "create %s: %m", path);
        memset(buf, byte, sizeof(buf));
        for (uint64_t off = 0; off < size; off += sizeof(buf))
                CHECK_MSG(pwrite(fd, buf, sizeof(buf), (off_t)off) == (ssize_t)sizeof(buf), "%m");
        close(fd);
}

static int alive(void *opaque)
{
        return simfront_vbd_running(opaque) == 1 ? 0 : -ECHILD;
}

/* ---- the raw socket ---- */

static int sock_connect(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t len = strlen(path);
        int fd;

        if (len >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, len + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int e = errno;

                close(fd);
                return -e;
        }
        return fd;
}

static void sock_send(int fd, const void *buf, size_t len)
{
        const char *p = buf;

        while (len) {
                ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

                CHECK_MSG(n > 0, "send: %m");
                p += n;
                len -= (size_t)n;
        }
}

static void sock_send_str(int fd, const char *s)
{
        sock_send(fd, s, strlen(s));
}

/* One reply line as JSON (NULL on EOF). */
static json_t *sock_reply(int fd)
{
        static char buf[65536];
        size_t n = 0;
        json_error_t je;
        json_t *j;

        for (;;) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                ssize_t k;

                CHECK_MSG(poll(&p, 1, 10000) == 1, "no reply from the daemon");
                k = read(fd, buf + n, 1); /* byte by byte: keep what follows for later */
                if (k <= 0)
                        return NULL;
                if (buf[n] == '\n')
                        break;
                CHECK_MSG(++n < sizeof(buf) - 1, "reply too long");
        }
        j = json_loadb(buf, n, 0, &je);
        CHECK_MSG(j, "reply is not JSON: %.*s", (int)n, buf);
        return j;
}

static void expect_error(json_t *j, const char *code, const char *what)
{
        json_t *e = json_object_get(j, "error");

        CHECK_MSG(j && json_is_false(json_object_get(j, "ok")), "%s: not an error reply", what);
        CHECK_MSG(strcmp(jstr(e, "code"), code) == 0, "%s: error %s, want %s (%s)", what,
                  jstr(e, "code"), code, jstr(e, "message"));
        CHECK_MSG(jint(j, "v") == 1, "%s: no protocol version", what);
        json_decref(j);
}

/* ---- the tests ---- */

struct vbd {
        uint32_t domid;
        struct simfront_vbd *vbd;
        struct simfront *fe;
        char img[600], sock[600];
        char d[16];
};

static void vbd_start(struct simfront_env *env, struct vbd *v, uint32_t domid, bool connect)
{
        static const char *extra[] = {"--ctl-dir", ctl_dir, NULL};
        struct simfront_vbd_opts vo = {.domid = domid, .devid = DEVID, .extra_args = extra};
        struct simfront_opts fo = {.domid = domid, .devid = DEVID, .timeout_ms = 5000};

        v->domid = domid;
        snprintf(v->d, sizeof(v->d), "%u", domid);
        snprintf(v->img, sizeof(v->img), "%s/disk%u.img", simfront_env_dir(env), domid);
        snprintf(v->sock, sizeof(v->sock), "%s/vbdd-%u-%u.sock", ctl_dir, domid, DEVID);
        make_image(v->img, IMG_SIZE, 0);
        {
                char spec[640];

                snprintf(spec, sizeof(spec), "raw:%s", v->img);
                vo.image = spec;
                CHECK_R(simfront_env_domain_create(env, domid), simfront_env_errmsg(env));
                CHECK_R(simfront_vbd_add(env, &vo, &v->vbd), simfront_env_errmsg(env));
        }
        cur_vbd = v->vbd;
        CHECK_R(simfront_vbd_wait_state(v->vbd, SIMFRONT_XB_INITWAIT, 10000), "no InitWait");
        if (!connect)
                return;
        v->fe = simfront_new(env, &fo);
        CHECK_MSG(v->fe, "simfront_new: %m");
        simfront_set_check(v->fe, alive, v->vbd);
        CHECK_R(simfront_connect(v->fe), simfront_errmsg(v->fe));
}

static void test_list(struct vbd *a, struct vbd *b)
{
        struct out *r;
        json_t *j, *row;
        size_t i;
        int seen = 0;

        cur_test = "list";
        j = ctl_json(0, "list --json", ctl("list", "--json"));
        CHECK_MSG(json_array_size(j) == 2, "list shows %zu daemons, want 2", json_array_size(j));
        json_array_foreach(j, i, row)
        {
                struct vbd *v = jint(row, "domid") == a->domid ? a : b;

                CHECK_MSG(jint(row, "domid") == v->domid && jint(row, "devid") == DEVID, "ids");
                CHECK_MSG(jint(row, "pid") == simfront_vbd_pid(v->vbd), "pid %lld, want %d",
                          jint(row, "pid"), (int)simfront_vbd_pid(v->vbd));
                CHECK_MSG(strstr(jstr(row, "image"), v->img), "image %s", jstr(row, "image"));
                CHECK_MSG(strcmp(jstr(row, "state"), v->fe ? "connected" : "initwait") == 0,
                          "state %s", jstr(row, "state"));
                seen |= v == a ? 1 : 2;
        }
        CHECK_MSG(seen == 3, "list misses a daemon");
        json_decref(j);

        r = ctl("list");
        CHECK_MSG(r->status == 0 && strstr(r->out, "DOMID") && strstr(r->out, a->img) &&
                      strstr(r->out, b->img) && strstr(r->out, "connected"),
                  "human list: %s", r->out);
        /* Filter, info, version. */
        j = ctl_json(0, "list -d", ctl("list", "--json", "-d", b->d));
        CHECK_MSG(json_array_size(j) == 1 && jint(json_array_get(j, 0), "domid") == b->domid,
                  "list -d");
        json_decref(j);
        j = ctl_json(0, "info", ctl("info", "-d", a->d, "-n", "51712", "--json"));
        CHECK_MSG(jint(j, "size") == IMG_SIZE && strcmp(jstr(j, "mode"), "w") == 0 &&
                      jint(j, "xenbus_state") == 4 && jint(j, "protocol") == 1,
                  "info fields");
        json_decref(j);
        r = ctl("info", "-d", a->d, "-n", "51712");
        CHECK_MSG(r->status == 0 && strstr(r->out, "connected"), "human info: %s", r->out);
        r = ctl("info", "-d", "77", "-n", "51712");
        CHECK_MSG(r->status == 3 && strstr(r->err, "no vbdd serves"), "info on nothing: %d %s",
                  r->status, r->err);
        j = ctl_json(3, "info --json on nothing", ctl("info", "-d", "77", "-n", "1", "--json"));
        CHECK_MSG(json_is_false(json_object_get(j, "ok")) && jint(j, "error.exit") == 3,
                  "--json error object");
        json_decref(j);
        r = ctl("info", "-d", a->d);
        CHECK_MSG(r->status == 2, "usage error exit %d", r->status);
        r = ctl("frobnicate");
        CHECK_MSG(r->status == 2, "unknown verb exit %d", r->status);
        printf("ok list, info\n");
}

static void test_pause_under_load(struct vbd *a)
{
        struct load *l = calloc(1, sizeof(*l));
        const char *argv[16];
        struct out r;
        json_t *j;
        uint64_t before, t0;
        int o, e;
        pid_t pid;
        char *buf;

        cur_test = "pause under load";
        cur_vbd = a->vbd;
        l->fe = a->fe;
        l->done = calloc(MAX_TAGS, 1);
        l->rnd = 42;
        /* Warm up. */
        while (l->completed < 3000) {
                load_fill(l, 32);
                CHECK_MSG(simfront_poll(l->fe, 1000) >= 0, "poll: %s", simfront_errmsg(l->fe));
        }
        /* Pause while the guest keeps the ring busy. */
        argv[0] = vbd_ctl;
        argv[1] = "--ctl-dir";
        argv[2] = ctl_dir;
        argv[3] = "pause";
        argv[4] = "-d";
        argv[5] = a->d;
        argv[6] = "-n";
        argv[7] = "51712";
        argv[8] = "--json";
        argv[9] = NULL;
        pid = spawn(argv, false, &o, &e);
        t0 = vbd_now_ms();
        for (;;) {
                int st;

                load_fill(l, 32);
                CHECK_MSG(simfront_poll(l->fe, 5) >= 0, "poll: %s", simfront_errmsg(l->fe));
                if (waitpid(pid, &st, WNOHANG) == pid) {
                        /* collect() wants to reap: re-create a zombie-free path */
                        r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
                        {
                                ssize_t n = read(o, r.out, sizeof(r.out) - 1);

                                r.out[n > 0 ? n : 0] = '\0';
                                n = read(e, r.err, sizeof(r.err) - 1);
                                r.err[n > 0 ? n : 0] = '\0';
                        }
                        close(o);
                        close(e);
                        break;
                }
                CHECK_MSG(vbd_now_ms() - t0 < 20000, "pause does not return");
        }
        j = ctl_json(0, "pause", &r);
        CHECK_MSG(json_is_true(json_object_get(j, "paused")), "pause reply");
        json_decref(j);

        /* Paused: the guest's requests wait in the ring, none is answered. */
        j = ctl_json(0, "stats", ctl("stats", "-d", a->d, "-n", "51712", "--json"));
        CHECK_MSG(jint(j, "inflight") == 0, "inflight %lld after pause", jint(j, "inflight"));
        CHECK_MSG(strcmp(jstr(j, "state"), "paused") == 0, "state %s", jstr(j, "state"));
        json_decref(j);
        while (simfront_poll(l->fe, 0) > 0) /* what was answered before the pause */
                ;
        load_fill(l, 1000); /* fill the ring */
        before = l->completed;
        CHECK_MSG(simfront_inflight(l->fe) > 0, "nothing queued");
        CHECK_MSG(simfront_poll(l->fe, 400) == 0, "requests served while paused");
        CHECK_MSG(l->completed == before, "completions while paused");
        j = ctl_json(0, "pause again", ctl("pause", "-d", a->d, "-n", "51712", "--json"));
        json_decref(j); /* already drained: immediate */

        /* Resume: everything queued completes. */
        j = ctl_json(0, "resume", ctl("resume", "-d", a->d, "-n", "51712", "--json"));
        CHECK_MSG(json_is_true(json_object_get(j, "was_paused")), "resume reply");
        json_decref(j);
        before = l->completed;
        while (l->completed < before + 3000) {
                load_fill(l, 32);
                CHECK_MSG(simfront_poll(l->fe, 1000) >= 0, "poll: %s", simfront_errmsg(l->fe));
        }
        CHECK_R(simfront_drain(l->fe, 10000), simfront_errmsg(l->fe));

        /* Exactly once, no errors, and the backend counted the same. */
        CHECK_MSG(l->completed == l->issued, "%" PRIu64 " issued, %" PRIu64 " completed", l->issued,
                  l->completed);
        for (uint64_t t = 0; t < l->issued; t++)
                CHECK_MSG(l->done[t] == 1, "tag %" PRIu64 " lost", t);
        CHECK_MSG(l->errors == 0, "%" PRIu64 " errors", l->errors);
        j = ctl_json(0, "stats", ctl("stats", "-d", a->d, "-n", "51712", "--json"));
        CHECK_MSG((uint64_t)jint(j, "ops.write.requests") == l->issued,
                  "backend counted %lld writes, guest issued %" PRIu64,
                  jint(j, "ops.write.requests"), l->issued);
        CHECK_MSG((uint64_t)jint(j, "ops.write.bytes") == l->issued * BLOCK, "bytes");
        CHECK_MSG(jint(j, "ops.write.errors") == 0 && jint(j, "inflight") == 0, "errors/inflight");
        CHECK_MSG(jint(j, "ops.write.lat_p50_us") > 0 &&
                      jint(j, "ops.write.lat_p50_us") <= jint(j, "ops.write.lat_p99_us") &&
                      jint(j, "ops.write.lat_p99_us") <= jint(j, "ops.write.lat_p999_us"),
                  "percentiles");
        json_decref(j);
        /* The data, through the ring and in the file. */
        buf = malloc(IMG_SIZE);
        CHECK_R(simfront_read(l->fe, 0, buf, IMG_SIZE), simfront_errmsg(l->fe));
        for (uint32_t b = 0; b < NBLOCKS; b++) {
                char want[BLOCK];

                if (!l->gen[b])
                        continue;
                fill(want, b, l->gen[b]);
                CHECK_MSG(memcmp(buf + (size_t)b * BLOCK, want, BLOCK) == 0, "block %u differs", b);
        }
        free(buf);
        CHECK_R(simfront_flush(l->fe), simfront_errmsg(l->fe));
        load_verify_image(l, a->img, false);
        printf("ok pause under load: %" PRIu64 " writes exactly once\n", l->issued);
        free(l->done);
        free(l);
}

static void test_stats_formats(struct vbd *a)
{
        struct out *r;
        json_t *j;
        char want[128];

        cur_test = "stats formats";
        r = ctl("stats", "-d", a->d, "-n", "51712");
        CHECK_MSG(r->status == 0 && strstr(r->out, "p99_us") && strstr(r->out, "write"),
                  "human stats: %s", r->out);
        r = ctl("stats", "--prometheus");
        snprintf(want, sizeof(want),
                 "vbd_requests_total{domid=\"%s\",devid=\"51712\",op=\"write\"} ", a->d);
        CHECK_MSG(r->status == 0 && strstr(r->out, want) &&
                      strstr(r->out, "# TYPE vbd_request_latency_seconds histogram") &&
                      strstr(r->out, "le=\"+Inf\"") && strstr(r->out, "vbd_up{"),
                  "prometheus: %s", r->out);
        j = ctl_json(0, "stats all", ctl("stats", "--json"));
        CHECK_MSG(json_array_size(j) == 2, "stats of all: %zu", json_array_size(j));
        json_decref(j);
        j = ctl_json(0, "log-level",
                     ctl("log-level", "-d", a->d, "-n", "51712", "--level", "debug", "--debug",
                         "ctl", "--json"));
        CHECK_MSG(strcmp(jstr(j, "level"), "debug") == 0 && strcmp(jstr(j, "debug"), "ctl") == 0,
                  "log-level reply");
        json_decref(j);
        j = ctl_json(0, "info", ctl("info", "-d", a->d, "-n", "51712", "--json"));
        CHECK_MSG(strcmp(jstr(j, "log_level"), "debug") == 0, "log level not kept");
        json_decref(j);
        json_decref(ctl_json(0, "log-level",
                             ctl("log-level", "-d", a->d, "-n", "51712", "--level", "info",
                                 "--debug", "", "--json")));
        r = ctl("log-level", "-d", a->d, "-n", "51712", "--level", "loud");
        CHECK_MSG(r->status == 2, "bad level exit %d", r->status);
        printf("ok stats (json, prometheus), log-level\n");
}

static void test_reopen(struct simfront_env *env, struct vbd *a)
{
        char img2[640], spec[700], *buf = malloc(1 << 20), want[4096];
        struct out *r;
        json_t *j;

        cur_test = "reopen";
        snprintf(img2, sizeof(img2), "%s/other.img", simfront_env_dir(env));
        make_image(img2, 2 * IMG_SIZE, 'Z');
        snprintf(spec, sizeof(spec), "raw:%s", img2);
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec);
        CHECK_MSG(r->status == 1 && strstr(r->err, "paused"), "reopen unpaused: %d %s", r->status,
                  r->err);
        json_decref(ctl_json(0, "pause", ctl("pause", "-d", a->d, "-n", "51712", "--json")));
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", "raw:/nonexistent/x.img");
        CHECK_MSG(r->status == 1 && strstr(r->err, "nonexistent"), "reopen bad: %d %s", r->status,
                  r->err);
        j = ctl_json(0, "reopen",
                     ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec, "--json"));
        CHECK_MSG(jint(j, "size") == 2 * IMG_SIZE, "new size");
        json_decref(j);
        json_decref(ctl_json(0, "resume", ctl("resume", "-d", a->d, "-n", "51712", "--json")));
        CHECK_R(simfront_read(a->fe, 0, buf, 1 << 20), simfront_errmsg(a->fe));
        memset(want, 'Z', sizeof(want));
        CHECK_MSG(memcmp(buf, want, sizeof(want)) == 0, "reads do not come from the new image");
        j = ctl_json(0, "info", ctl("info", "-d", a->d, "-n", "51712", "--json"));
        CHECK_MSG(strstr(jstr(j, "image"), "other.img"), "info image %s", jstr(j, "image"));
        json_decref(j);
        {
                long long sectors = 0;

                CHECK_R(simfront_vbd_read_backend(a->vbd, "sectors", &sectors), "sectors");
                CHECK_MSG(sectors == 2 * IMG_SIZE / 512, "sectors not republished: %lld", sectors);
        }
        free(buf);
        printf("ok reopen while paused\n");
}

/* Does somebody (not fd's open file) hold lock byte off of the file at path? */
static bool lock_byte_held(const char *path, int off)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};

        CHECK_MSG(fd >= 0, "open %s: %m", path);
        CHECK_MSG(fcntl(fd, F_OFD_GETLK, &fl) == 0, "F_OFD_GETLK %s: %m", path);
        close(fd);
        return fl.l_type != F_UNLCK;
}

/*
 * Reopen onto the cbt filter over img, the image the device holds
 * read-write (raw:img): image locks are handed over to the new stack, the
 * change map's own whole-file lock is not, so a second reopen onto the same
 * map is refused (EBUSY) and leaves the old stack with the image lock and
 * the map.  Back to raw:img afterwards, the map let go.  A connected ring
 * may refuse the filter's larger io scratch ("cannot serve"): that must
 * leave the image locked and the new stack's map unlocked.
 */
static void test_reopen_cbt(struct vbd *a, const char *img)
{
        char map[700], spec[700];
        struct out *r;
        int i;

        snprintf(map, sizeof(map), "%s.cbt", img);
        unlink(map);
        snprintf(spec, sizeof(spec), "cbt:raw:%s", img);
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec);
        if (r->status != 0 && strstr(r->err, "unknown image driver 'cbt'")) {
                printf("# no cbt filter compiled in: no reopen onto a change tracker\n");
                return;
        }
        CHECK_MSG(!strstr(r->err, "in use"), "reopen onto cbt over the held image: %s", r->err);
        CHECK_MSG(r->status == 0 || strstr(r->err, "cannot serve"), "reopen onto cbt: %d %s",
                  r->status, r->err);
        if (r->status != 0) {
                CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(img, 201),
                          "a refused swap onto cbt left other.img unlocked");
                CHECK_MSG(!lock_byte_held(map, 0), "the refused cbt stack kept its map locked");
                printf("# the ring refuses cbt's io scratch: no reopen onto the same map\n");
                unlink(map);
                return;
        }
        CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(map, 0),
                  "cbt over other.img: image %d map %d", lock_byte_held(img, 101),
                  lock_byte_held(map, 0));

        snprintf(spec, sizeof(spec), "cbt:raw:%s,direct=off", img);
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec);
        CHECK_MSG(r->status == 1 && strstr(r->err, "change map is in use"),
                  "reopen onto the same map: %d %s", r->status, r->err);
        CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(img, 201),
                  "a reopen refused on the map left other.img unlocked");
        CHECK_MSG(lock_byte_held(map, 0), "a reopen refused on the map left the map unlocked");

        snprintf(spec, sizeof(spec), "raw:%s", img);
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec);
        CHECK_MSG(r->status == 0, "reopen from cbt back to raw: %d %s", r->status, r->err);
        CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(img, 201),
                  "other.img not locked after leaving cbt");
        for (i = 0; i < 100 && lock_byte_held(map, 0); i++) /* the old stack closes */
                usleep(20 * 1000);
        CHECK_MSG(!lock_byte_held(map, 0), "the map is still locked after leaving cbt");
        unlink(map);
        printf("ok reopen onto cbt: the image lock handed over, the same map refused, let go\n");
}

/*
 * Reopen and image locks (vbd/lock.h): the device serves other.img
 * read-write (test_reopen).  A reopen that fails leaves it locked; one that
 * is refused because somebody else uses the new image says so; a reopen onto
 * a qcow2 overlay whose backing file is the image the device holds
 * read-write, or onto the same image, gets past the locks (the old stack
 * lets them go while the new one opens).
 */
static void test_reopen_locks(struct simfront_env *env, struct vbd *a)
{
        char img[640], over[640], busy[640], spec[700], cmd[2100], buf[4096], want[4096];
        int hold;
        struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 101, .l_len = 1};
        struct out *r;

        cur_test = "reopen and image locks";
        snprintf(img, sizeof(img), "%s/other.img", simfront_env_dir(env));
        snprintf(over, sizeof(over), "%s/over.qcow2", simfront_env_dir(env));
        snprintf(busy, sizeof(busy), "%s/busy.img", simfront_env_dir(env));
        CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(img, 201),
                  "the device does not hold other.img read-write");
        json_decref(ctl_json(0, "pause", ctl("pause", "-d", a->d, "-n", "51712", "--json")));
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", "raw:/nonexistent/y.img");
        CHECK_MSG(r->status == 1, "reopen bad: %d %s", r->status, r->err);
        CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(img, 201),
                  "a failed reopen left other.img unlocked");

        /* Somebody writes busy.img (holds "write", byte 101): refused, named. */
        make_image(busy, IMG_SIZE, 'B');
        hold = open(busy, O_RDWR | O_CLOEXEC);
        CHECK_MSG(hold >= 0 && fcntl(hold, F_OFD_SETLK, &fl) == 0, "lock busy.img: %m");
        snprintf(spec, sizeof(spec), "raw:%s", busy);
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec);
        snprintf(want, sizeof(want), "failed to get shared \"write\" lock: pid %d (",
                 (int)getpid());
        CHECK_MSG(r->status == 1 && strstr(r->err, "is in use") && strstr(r->err, want),
                  "reopen onto a busy image: %d %s", r->status, r->err);
        close(hold);
        CHECK_MSG(lock_byte_held(img, 201), "a refused reopen left other.img unlocked");

        /* The same image, other options: the new stack opens it read-write
         * while the old one still has it open. */
        snprintf(spec, sizeof(spec), "raw:%s,direct=off", img);
        r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec);
        CHECK_MSG(r->status == 0, "reopen onto the held image: %d %s", r->status, r->err);
        CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(img, 201),
                  "other.img not locked after the reopen onto itself");

        /* The change tracker over the held image: the image lock is handed
         * over, the tracker's map lock (drivers/cbt) is not, so a reopen
         * onto the same map is refused and the old stack keeps both. */
        test_reopen_cbt(a, img);

        /* An overlay whose backing file is the held image: its read-only lock
         * would conflict with the old stack's read-write one.  (A connected
         * ring then refuses qcow2, whose io scratch is larger than raw's:
         * that failure must give the old stack its locks back.) */
        snprintf(cmd, sizeof(cmd),
                 "qemu-img create -q -f qcow2 -b '%s' -F raw '%s' >/dev/null 2>&1", img, over);
        if (system(cmd) == 0) {
                snprintf(spec, sizeof(spec), "qcow2:%s", over);
                r = ctl("reopen", "-d", a->d, "-n", "51712", "--image", spec);
                CHECK_MSG(!strstr(r->err, "in use"), "reopen onto an overlay: %s", r->err);
                CHECK_MSG(r->status == 0 || strstr(r->err, "cannot serve"),
                          "reopen onto an overlay: %d %s", r->status, r->err);
                if (r->status == 0) {
                        CHECK_MSG(!lock_byte_held(img, 101) && lock_byte_held(img, 201),
                                  "the backing file is not locked read-only");
                        CHECK_MSG(lock_byte_held(over, 101), "the overlay is not locked");
                } else {
                        CHECK_MSG(lock_byte_held(img, 101) && lock_byte_held(img, 201),
                                  "a refused swap left other.img unlocked");
                        CHECK_MSG(!lock_byte_held(over, 101), "the refused overlay kept its lock");
                }
        } else {
                printf("# no qemu-img: no reopen onto an overlay\n");
        }
        json_decref(ctl_json(0, "resume", ctl("resume", "-d", a->d, "-n", "51712", "--json")));
        CHECK_R(simfront_read(a->fe, 0, buf, sizeof(buf)), simfront_errmsg(a->fe));
        memset(want, 'Z', sizeof(want));
        CHECK_MSG(memcmp(buf, want, sizeof(buf)) == 0, "other.img does not read back");
        printf("ok reopen and locks: failed and refused reopens keep them, onto the held image, "
               "onto an overlay of it\n");
}

/* ---- reopen beside the daemon's own NBD export (issue 13) ---- */

/* A client of the export: libnbd's python, one connection, driven over a
 * pipe one command a line, one reply a line ("ok ..." or "err ERRNO MSG").
 *   size                  ok SIZE READONLY
 *   read OFF LEN          ok HEX
 *   write OFF HEX         ok (then flush)
 *   aread OFF LEN         ok COOKIE: a read left in flight
 *   wait COOKIE MS        ok HEX once answered, or "pending" after MS
 *   quit                  ok (NBD_CMD_DISC) */
static const char nbd_client_py[] =
    "import sys, time, nbd\n"
    "h = nbd.NBD()\n"
    "h.connect_uri(sys.argv[1])\n"
    "bufs = {}\n"
    "def reply(s):\n"
    "    sys.stdout.write(s + '\\n')\n"
    "    sys.stdout.flush()\n"
    "for line in sys.stdin:\n"
    "    a = line.split()\n"
    "    try:\n"
    "        if a[0] == 'size':\n"
    "            reply('ok %d %d' % (h.get_size(), h.is_read_only()))\n"
    "        elif a[0] == 'read':\n"
    "            reply('ok ' + h.pread(int(a[2]), int(a[1])).hex())\n"
    "        elif a[0] == 'write':\n"
    "            h.pwrite(bytes.fromhex(a[2]), int(a[1]))\n"
    "            h.flush()\n"
    "            reply('ok')\n"
    "        elif a[0] == 'aread':\n"
    "            b = nbd.Buffer(int(a[2]))\n"
    "            c = h.aio_pread(b, int(a[1]))\n"
    "            bufs[c] = b\n"
    "            reply('ok %d' % c)\n"
    "        elif a[0] == 'wait':\n"
    "            c, end = int(a[1]), time.monotonic() + int(a[2]) / 1000\n"
    "            while not h.aio_command_completed(c):\n"
    "                left = end - time.monotonic()\n"
    "                if left <= 0:\n"
    "                    break\n"
    "                h.poll(max(1, int(left * 1000)))\n"
    "            else:\n"
    "                reply('ok ' + bytes(bufs.pop(c).to_bytearray()).hex())\n"
    "                continue\n"
    "            reply('pending')\n"
    "        elif a[0] == 'quit':\n"
    "            h.shutdown()\n"
    "            reply('ok')\n"
    "            break\n"
    "    except nbd.Error as e:\n"
    "        reply('err %s %s' % (e.errnum, e.string))\n";

struct nbdc {
        pid_t pid;
        int in, out; /* its stdin, its stdout */
        char *line;
        size_t cap;
};

/* A python3 that has libnbd's "nbd" module (it belongs to the distribution's
 * python3, which may not be the first in PATH), or NULL. */
static const char *python_nbd(void)
{
        static const char *const pys[] = {"python3", "/usr/bin/python3"};

        for (size_t i = 0; i < sizeof(pys) / sizeof(pys[0]); i++) {
                pid_t pid = fork();
                int st;

                CHECK_MSG(pid >= 0, "fork: %m");
                if (pid == 0) {
                        int null = open("/dev/null", O_RDWR);

                        dup2(null, 1);
                        dup2(null, 2);
                        execlp(pys[i], pys[i], "-c", "import nbd", (char *)NULL);
                        _exit(127);
                }
                if (waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0)
                        return pys[i];
        }
        return NULL;
}

static void nbdc_open(struct nbdc *c, const char *py, const char *uri)
{
        int i[2], o[2];

        CHECK_MSG(pipe2(i, O_CLOEXEC) == 0 && pipe2(o, O_CLOEXEC) == 0, "pipe: %m");
        c->pid = fork();
        CHECK_MSG(c->pid >= 0, "fork: %m");
        if (c->pid == 0) {
                dup2(i[0], 0);
                dup2(o[1], 1);
                execlp(py, py, "-c", nbd_client_py, uri, (char *)NULL);
                _exit(127);
        }
        close(i[0]);
        close(o[1]);
        c->in = i[1];
        c->out = o[0];
        c->cap = 1 << 16;
        c->line = malloc(c->cap);
        CHECK_MSG(c->line, "malloc");
}

/* Send one command, return its reply line (valid until the next command). */
static const char *nbdc_cmd(struct nbdc *c, const char *fmt, ...)
{
        char cmd[2 * BLOCK + 64];
        size_t n = 0;
        va_list ap;
        int len;

        va_start(ap, fmt);
        len = vsnprintf(cmd, sizeof(cmd) - 1, fmt, ap);
        va_end(ap);
        CHECK_MSG(len > 0 && (size_t)len < sizeof(cmd) - 1, "NBD client command too long");
        cmd[len++] = '\n';
        for (char *p = cmd; len > 0;) {
                ssize_t k = write(c->in, p, (size_t)len);

                CHECK_MSG(k > 0, "the NBD client's stdin: %m");
                p += k;
                len -= (int)k;
        }
        for (;;) {
                struct pollfd p = {.fd = c->out, .events = POLLIN};
                ssize_t k;

                CHECK_MSG(poll(&p, 1, 30000) == 1, "the NBD client does not answer '%.40s'", cmd);
                if (n + 4096 > c->cap) {
                        c->cap *= 2;
                        c->line = realloc(c->line, c->cap);
                        CHECK_MSG(c->line, "realloc");
                }
                k = read(c->out, c->line + n, c->cap - n - 1);
                CHECK_MSG(k > 0, "the NBD client died on '%.40s' (its stderr is above)", cmd);
                n += (size_t)k;
                if (c->line[n - 1] == '\n')
                        break;
        }
        c->line[n - 1] = '\0';
        return c->line;
}

static void nbdc_close(struct nbdc *c)
{
        const char *r = nbdc_cmd(c, "quit");
        int st;

        CHECK_MSG(strcmp(r, "ok") == 0, "NBD disconnect: %s", r);
        close(c->in);
        close(c->out);
        CHECK_MSG(waitpid(c->pid, &st, 0) == c->pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "the NBD client exited with %d", st);
        free(c->line);
}

/* The test's patterns: each 64-bit word holds a tag and its own offset, so
 * images, and places in them, cannot be mistaken for one another. */
#define TAG_A 0xa1u
#define TAG_B 0xb2u
#define TAG_C 0xc3u /* written through the export after the reopen */
#define TAG_G 0xd4u /* written by the guest after the reopen */
#define TAG_D 0xe5u /* the image of another size */

static void pattern(void *buf, uint64_t off, size_t len, unsigned tag)
{
        uint64_t *p = buf;

        for (size_t i = 0; i < len / 8; i++)
                p[i] = (uint64_t)tag << 56 | (off + i * 8);
}

static void make_pattern_image(const char *path, uint64_t size, unsigned tag)
{
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        static char buf[1 << 16];

        CHECK_MSG(fd >= 0, "create %s: %m", path);
        for (uint64_t off = 0; off < size; off += sizeof(buf)) {
                pattern(buf, off, sizeof(buf), tag);
                CHECK_MSG(pwrite(fd, buf, sizeof(buf), (off_t)off) == (ssize_t)sizeof(buf), "%m");
        }
        close(fd);
}

/* Which tag the block at off carries in buf: the tag, or -1 (a mix, or
 * not a pattern at that offset). */
static int tag_of(const void *buf, uint64_t off, size_t len)
{
        const uint64_t *p = buf;
        unsigned tag = (unsigned)(p[0] >> 56);
        char want[BLOCK];

        CHECK_MSG(len == BLOCK, "tag_of: one block");
        pattern(want, off, len, tag);
        return memcmp(want, buf, len) == 0 ? (int)tag : -1;
}

static void hex_decode(const char *hex, void *buf, size_t len)
{
        uint8_t *b = buf;

        CHECK_MSG(strlen(hex) == 2 * len, "NBD read: %zu hex digits, want %zu", strlen(hex),
                  2 * len);
        for (size_t i = 0; i < len; i++)
                CHECK_MSG(sscanf(hex + 2 * i, "%2hhx", &b[i]) == 1, "NBD read: bad hex");
}

static void hex_encode(const void *buf, size_t len, char *hex)
{
        const uint8_t *b = buf;

        for (size_t i = 0; i < len; i++)
                sprintf(hex + 2 * i, "%02x", b[i]);
}

/* The tag of the block at off as the NBD connection reads it. */
static int nbd_tag(struct nbdc *c, uint64_t off)
{
        char buf[BLOCK];
        const char *r = nbdc_cmd(c, "read %" PRIu64 " %u", off, BLOCK);

        CHECK_MSG(strncmp(r, "ok ", 3) == 0, "NBD read at %" PRIu64 ": %s", off, r);
        hex_decode(r + 3, buf, BLOCK);
        return tag_of(buf, off, BLOCK);
}

static void nbd_write_tag(struct nbdc *c, uint64_t off, unsigned tag)
{
        char buf[BLOCK], hex[2 * BLOCK + 1];
        const char *r;

        pattern(buf, off, BLOCK, tag);
        hex_encode(buf, BLOCK, hex);
        r = nbdc_cmd(c, "write %" PRIu64 " %s", off, hex);
        CHECK_MSG(strcmp(r, "ok") == 0, "NBD write at %" PRIu64 ": %s", off, r);
}

/* ... as the guest reads it through the ring */
static int guest_tag(struct simfront *fe, uint64_t off)
{
        char buf[BLOCK];

        CHECK_R(simfront_read(fe, off, buf, BLOCK), simfront_errmsg(fe));
        return tag_of(buf, off, BLOCK);
}

/* ... as it is in the file */
static int file_tag(const char *path, uint64_t off)
{
        char buf[BLOCK];
        int fd = open(path, O_RDONLY);

        CHECK_MSG(fd >= 0, "open %s: %m", path);
        CHECK_MSG(pread(fd, buf, BLOCK, (off_t)off) == BLOCK, "pread %s: %m", path);
        close(fd);
        return tag_of(buf, off, BLOCK);
}

/* Every block of the file carries tag, but those at except[] (-1 ends it). */
static void check_file_all(const char *path, uint64_t size, unsigned tag, const int64_t *except)
{
        for (uint64_t off = 0; off < size; off += BLOCK) {
                bool skip = false;

                for (const int64_t *e = except; e && *e >= 0; e++)
                        skip |= (uint64_t)*e == off;
                if (!skip)
                        CHECK_MSG(file_tag(path, off) == (int)tag,
                                  "%s: block at %" PRIu64 " is not 0x%x's any more", path, off,
                                  tag);
        }
}

/* A new connection with nbdcopy (if installed): the whole export equals
 * the file.  0, or 77 if there is no nbdcopy. */
static int nbdcopy_equals(const char *uri, const char *dir, const char *file)
{
        char out[700];
        pid_t pid;
        int st;

        snprintf(out, sizeof(out), "%s/nbdcopy.img", dir);
        pid = fork();
        CHECK_MSG(pid >= 0, "fork: %m");
        if (pid == 0) {
                execlp("nbdcopy", "nbdcopy", uri, out, (char *)NULL);
                _exit(127);
        }
        CHECK_MSG(waitpid(pid, &st, 0) == pid, "waitpid: %m");
        if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
                return 77;
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "nbdcopy %s: status %d", uri, st);
        pid = fork();
        CHECK_MSG(pid >= 0, "fork: %m");
        if (pid == 0) {
                execlp("cmp", "cmp", out, file, (char *)NULL);
                _exit(127);
        }
        CHECK_MSG(waitpid(pid, &st, 0) == pid, "waitpid: %m");
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "nbdcopy over a new connection: the export differs from %s", file);
        unlink(out);
        return 0;
}

/*
 * vbdd-sim serving a guest and its own --nbd export: a libnbd connection
 * made before the reopen reads B afterwards (a read held while paused is
 * answered from B), new connections and the guest read B, the export's
 * writes land in B (A untouched); an image of another size is refused and
 * both keep serving B.  77 without libnbd's python.
 */
static int test_reopen_nbd(struct simfront_env *env)
{
        static const char *extra[8];
        static char ep[128], uri[160];
        struct simfront_vbd_opts vo = {.domid = 3, .devid = DEVID, .extra_args = extra};
        struct simfront_opts fo = {.domid = 3, .devid = DEVID, .timeout_ms = 5000};
        const uint64_t offs[] = {0, 5 * BLOCK, IMG_SIZE / 2 + BLOCK, IMG_SIZE - BLOCK};
        const uint64_t held = 3 * BLOCK, woff = 7 * BLOCK, goff = 9 * BLOCK;
        const int64_t written[] = {(int64_t)woff, (int64_t)goff, -1};
        char sockdir[] = "/tmp/vbd-rn.XXXXXX", imga[600], imgb[600], imgd[600], spec[700];
        char sock[64], buf[BLOCK], want[64];
        const char *py = python_nbd(), *r;
        struct simfront_vbd *vbd;
        struct simfront *fe;
        struct nbdc c1, c2;
        unsigned long long cookie;
        struct out *o;
        json_t *j;
        int st, copy;

        cur_test = "reopen beside an NBD export";
        if (!py) {
                printf("skip reopen beside an NBD export: no python3 with libnbd's nbd module\n");
                return 77;
        }
        CHECK_MSG(mkdtemp(sockdir), "mkdtemp: %m"); /* sun_path is short */
        snprintf(sock, sizeof(sock), "%s/e.sock", sockdir);
        snprintf(ep, sizeof(ep), "unix:%s", sock);
        snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s", sock);
        extra[0] = "--ctl-dir";
        extra[1] = ctl_dir;
        extra[2] = "--nbd";
        extra[3] = ep;
        extra[4] = "--nbd-writable";
        snprintf(imga, sizeof(imga), "%s/a.img", simfront_env_dir(env));
        snprintf(imgb, sizeof(imgb), "%s/b.img", simfront_env_dir(env));
        snprintf(imgd, sizeof(imgd), "%s/d.img", simfront_env_dir(env));
        make_pattern_image(imga, IMG_SIZE, TAG_A);
        make_pattern_image(imgb, IMG_SIZE, TAG_B);
        make_pattern_image(imgd, 2 * IMG_SIZE, TAG_D);

        snprintf(spec, sizeof(spec), "raw:%s", imga);
        vo.image = spec;
        CHECK_R(simfront_env_domain_create(env, 3), simfront_env_errmsg(env));
        CHECK_R(simfront_vbd_add(env, &vo, &vbd), simfront_env_errmsg(env));
        cur_vbd = vbd;
        CHECK_R(simfront_vbd_wait_state(vbd, SIMFRONT_XB_INITWAIT, 10000), "no InitWait");
        fe = simfront_new(env, &fo);
        CHECK_MSG(fe, "simfront_new: %m");
        simfront_set_check(fe, alive, vbd);
        CHECK_R(simfront_connect(fe), simfront_errmsg(fe));
        for (int i = 0; i < 200 && access(sock, F_OK) < 0; i++)
                usleep(25000);

        /* 1. A through the export and the ring */
        nbdc_open(&c1, py, uri);
        snprintf(want, sizeof(want), "ok %u 0", IMG_SIZE);
        r = nbdc_cmd(&c1, "size");
        CHECK_MSG(strcmp(r, want) == 0, "export size, read-only: '%s', want '%s'", r, want);
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
                CHECK_MSG(nbd_tag(&c1, offs[i]) == TAG_A, "NBD does not read A at %" PRIu64,
                          offs[i]);
                CHECK_MSG(guest_tag(fe, offs[i]) == TAG_A, "the guest does not read A at %" PRIu64,
                          offs[i]);
        }

        /* 2. pause, then a read sent meanwhile is held; reopen to B; resume */
        json_decref(ctl_json(0, "pause", ctl("pause", "-d", "3", "-n", "51712", "--json")));
        r = nbdc_cmd(&c1, "aread %" PRIu64 " %u", held, BLOCK);
        CHECK_MSG(sscanf(r, "ok %llu", &cookie) == 1, "aread: %s", r);
        r = nbdc_cmd(&c1, "wait %llu 300", cookie);
        CHECK_MSG(strcmp(r, "pending") == 0, "an NBD read was answered while paused: %.60s", r);
        snprintf(spec, sizeof(spec), "raw:%s", imgb);
        o = ctl("reopen", "-d", "3", "-n", "51712", "--image", spec, "--json");
        CHECK_MSG(o->status == 0, "reopen beside the export: exit %d: %s %s", o->status, o->err,
                  o->out);
        j = ctl_json(0, "reopen", o);
        CHECK_MSG(jint(j, "size") == IMG_SIZE, "reopen: size %lld", jint(j, "size"));
        json_decref(j);
        r = nbdc_cmd(&c1, "wait %llu 200", cookie);
        CHECK_MSG(strcmp(r, "pending") == 0, "the reopen let an NBD read through while paused");
        json_decref(ctl_json(0, "resume", ctl("resume", "-d", "3", "-n", "51712", "--json")));

        /* 3. B everywhere: the held read, the old connection, a new one, the guest */
        r = nbdc_cmd(&c1, "wait %llu 10000", cookie);
        CHECK_MSG(strncmp(r, "ok ", 3) == 0, "the read held over the reopen: %.60s", r);
        hex_decode(r + 3, buf, BLOCK);
        CHECK_MSG(tag_of(buf, held, BLOCK) == TAG_B, "the read held over the reopen got 0x%x",
                  tag_of(buf, held, BLOCK));
        nbdc_open(&c2, py, uri);
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
                int t = nbd_tag(&c1, offs[i]);

                CHECK_MSG(t == TAG_B, "the connection made before the reopen reads %s at %" PRIu64,
                          t == TAG_A ? "A (the export was not swapped)" : "neither A nor B",
                          offs[i]);
                CHECK_MSG(nbd_tag(&c2, offs[i]) == TAG_B, "a new connection does not read B");
                CHECK_MSG(guest_tag(fe, offs[i]) == TAG_B, "the guest does not read B at %" PRIu64,
                          offs[i]);
        }
        copy = nbdcopy_equals(uri, sockdir, imgb);
        j = ctl_json(0, "info", ctl("info", "-d", "3", "-n", "51712", "--json"));
        CHECK_MSG(strstr(jstr(j, "image"), "b.img"), "info image %s", jstr(j, "image"));
        CHECK_MSG(jint(j, "nbd.clients") == 2, "%lld NBD clients, want 2 (one from before)",
                  jint(j, "nbd.clients"));
        json_decref(j);

        /* 4. writes after the reopen go to B, from the export and from the ring */
        nbd_write_tag(&c1, woff, TAG_C);
        CHECK_MSG(file_tag(imgb, woff) == TAG_C, "the NBD write is not in B");
        CHECK_MSG(file_tag(imga, woff) == TAG_A, "the NBD write went to A");
        CHECK_MSG(guest_tag(fe, woff) == TAG_C, "the guest does not see the NBD write");
        pattern(buf, goff, BLOCK, TAG_G);
        CHECK_R(simfront_write(fe, goff, buf, BLOCK), simfront_errmsg(fe));
        CHECK_MSG(nbd_tag(&c2, goff) == TAG_G, "the export does not see the guest's write");
        CHECK_MSG(file_tag(imgb, goff) == TAG_G, "the guest's write is not in B");
        check_file_all(imga, IMG_SIZE, TAG_A, NULL);
        check_file_all(imgb, IMG_SIZE, TAG_B, written);

        /* 5. another size: refused, and B is still served by both */
        json_decref(ctl_json(0, "pause", ctl("pause", "-d", "3", "-n", "51712", "--json")));
        snprintf(spec, sizeof(spec), "raw:%s", imgd);
        o = ctl("reopen", "-d", "3", "-n", "51712", "--image", spec);
        CHECK_MSG(o->status == 1 && strstr(o->err, "NBD export"),
                  "reopen to another size beside the export: exit %d: %s", o->status, o->err);
        printf("# refused: %s", o->err);
        json_decref(ctl_json(0, "resume", ctl("resume", "-d", "3", "-n", "51712", "--json")));
        r = nbdc_cmd(&c1, "size");
        CHECK_MSG(strcmp(r, want) == 0, "export size after the refusal: %s", r);
        {
                long long sectors = 0;

                CHECK_R(simfront_vbd_read_backend(vbd, "sectors", &sectors), "sectors");
                CHECK_MSG(sectors == IMG_SIZE / 512, "sectors %lld after the refusal", sectors);
        }
        j = ctl_json(0, "info", ctl("info", "-d", "3", "-n", "51712", "--json"));
        CHECK_MSG(strstr(jstr(j, "image"), "b.img"), "info image %s after the refusal",
                  jstr(j, "image"));
        CHECK_MSG(jint(j, "size") == IMG_SIZE, "info size %lld after the refusal", jint(j, "size"));
        json_decref(j);
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
                CHECK_MSG(nbd_tag(&c1, offs[i]) == TAG_B, "NBD after the refusal: not B");
                CHECK_MSG(guest_tag(fe, offs[i]) == TAG_B, "the guest after the refusal: not B");
        }
        CHECK_MSG(nbd_tag(&c2, woff) == TAG_C && guest_tag(fe, goff) == TAG_G,
                  "the writes are gone after the refusal");
        nbd_write_tag(&c2, goff, TAG_C);
        CHECK_MSG(file_tag(imgb, goff) == TAG_C, "an NBD write after the refusal is not in B");
        CHECK_MSG(guest_tag(fe, goff) == TAG_C, "the guest after the refusal: not the NBD write");
        check_file_all(imgd, 2 * IMG_SIZE, TAG_D, NULL);
        check_file_all(imga, IMG_SIZE, TAG_A, NULL);

        /* the end: the clients leave, the guest detaches, the daemon exits 0 */
        nbdc_close(&c1);
        nbdc_close(&c2);
        CHECK_R(simfront_disconnect(fe), simfront_errmsg(fe));
        o = ctl("detach", "-d", "3", "-n", "51712");
        CHECK_MSG(o->status == 0, "detach: %d %s", o->status, o->err);
        CHECK_R(simfront_vbd_wait(vbd, 5000, &st), "vbdd still running after detach");
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "vbdd exit status %d", st);
        CHECK_MSG(access(sock, F_OK) < 0 && errno == ENOENT, "NBD socket left behind");
        simfront_free(fe);
        simfront_vbd_free(vbd);
        cur_vbd = NULL;
        rmdir(sockdir);
        printf("ok reopen beside an NBD export: the old connection%s and the guest read B, "
               "writes land in B, another size refused\n",
               copy ? "" : ", nbdcopy");
        return 0;
}

static void test_socket_limits(struct vbd *a)
{
        static char big[VBD_BIG];
        int fd, fds[20], n = 0;
        json_t *j;

        cur_test = "socket limits";
        fd = sock_connect(a->sock);
        CHECK_MSG(fd >= 0, "connect: %s", strerror(-fd));
        sock_send_str(fd, "garbage\n");
        expect_error(sock_reply(fd), "EINVAL", "garbage");
        sock_send_str(fd, "[1,2,3]\n");
        expect_error(sock_reply(fd), "EINVAL", "array");
        sock_send_str(fd, "{\"cmd\":\"nope\"}\n");
        expect_error(sock_reply(fd), "EOPNOTSUPP", "unknown command");
        sock_send_str(fd, "{\"v\":2,\"cmd\":\"info\"}\n");
        expect_error(sock_reply(fd), "EPROTONOSUPPORT", "version 2");
        sock_send_str(fd, "{\"cmd\":\"info\",\"cmd\":\"stats\"}\n");
        expect_error(sock_reply(fd), "EINVAL", "duplicate key");
        sock_send_str(fd, "{\"cmd\":\"pause\",\"args\":{\"x\":1}}\n");
        expect_error(sock_reply(fd), "EINVAL", "pause with args");
        sock_send_str(fd, "{\"cmd\":\"reopen\",\"args\":{\"image\":7}}\n");
        expect_error(sock_reply(fd), "EINVAL", "reopen with a number");
        sock_send_str(fd, "{\"cmd\":\"info\",\"x\":\"\xff\xfe\"}\n");
        expect_error(sock_reply(fd), "EINVAL", "bad UTF-8");
        sock_send(fd, "{\"cmd\":\"in\0fo\"}\n", 16);
        expect_error(sock_reply(fd), "EINVAL", "NUL");
        /* Deep nesting within the line limit. */
        memset(big, '[', 60000);
        big[60000] = '\n';
        sock_send(fd, big, 60001);
        expect_error(sock_reply(fd), "EINVAL", "deep nesting");
        /* Oversized: 200 KiB without a newline, then the newline. */
        memset(big, 'x', sizeof(big));
        sock_send(fd, big, sizeof(big));
        expect_error(sock_reply(fd), "E2BIG", "oversized");
        sock_send_str(fd, "\n");
        /* The same connection still works, replies carry the id. */
        sock_send_str(fd, "{\"cmd\":\"info\",\"id\":\"abc\"}\n");
        j = sock_reply(fd);
        CHECK_MSG(j && json_is_true(json_object_get(j, "ok")) &&
                      strcmp(jstr(j, "id"), "abc") == 0 &&
                      jint(json_object_get(j, "result"), "domid") == a->domid,
                  "info after the garbage");
        json_decref(j);
        /* Two requests in one write, answered in order. */
        sock_send_str(fd, "{\"cmd\":\"version\",\"id\":1}\n{\"cmd\":\"stats\",\"id\":2}\n");
        j = sock_reply(fd);
        CHECK_MSG(jint(j, "id") == 1 &&
                      json_is_array(json_object_get(json_object_get(j, "result"), "commands")),
                  "pipelined 1");
        json_decref(j);
        j = sock_reply(fd);
        CHECK_MSG(jint(j, "id") == 2, "pipelined 2");
        json_decref(j);
        close(fd);

        /* At most 16 clients; the next is told why. */
        usleep(200000); /* the daemon sees the close above */
        for (n = 0; n < 16; n++) {
                fds[n] = sock_connect(a->sock);
                CHECK_MSG(fds[n] >= 0, "connect %d", n);
                sock_send_str(fds[n], "{\"cmd\":\"version\"}\n");
                j = sock_reply(fds[n]);
                CHECK_MSG(j && json_is_true(json_object_get(j, "ok")), "client %d not served", n);
                json_decref(j);
        }
        fd = sock_connect(a->sock);
        CHECK_MSG(fd >= 0, "connect 17");
        expect_error(sock_reply(fd), "EMFILE", "17th client");
        close(fd);
        while (n)
                close(fds[--n]);
        usleep(100000);
        json_decref(
            ctl_json(0, "info after the flood", ctl("info", "-d", a->d, "-n", "51712", "--json")));
        CHECK_MSG(simfront_vbd_running(a->vbd) == 1, "daemon died");
        printf("ok malformed, oversized and too many requests: error replies, still serving\n");
}

static void test_not_root(struct simfront_env *env, struct vbd *a)
{
        struct out *r;
        int st, p[2];
        pid_t pid;
        char buf[512] = "";
        ssize_t n;

        cur_test = "non-root";
        if (geteuid() != 0) {
                printf("skip non-root checks: not running as root\n");
                return;
        }
        /* 1. The socket is 0600 root: connect() itself is refused. */
        struct stat sb;
        CHECK_MSG(stat(a->sock, &sb) == 0 && (sb.st_mode & 0777) == 0600 && sb.st_uid == 0,
                  "socket mode %o uid %u", sb.st_mode & 0777, sb.st_uid);
        /* Let nobody reach the directory, so that the socket's mode decides. */
        CHECK_MSG(chmod(ctl_dir, 0755) == 0, "chmod: %m");
        r = ctl_as(true, "info", "-d", a->d, "-n", "51712", NULL);
        CHECK_MSG(r->status == 4 && strstr(r->err, "ermission"), "nobody's vbd-ctl info: %d %s",
                  r->status, r->err);
        /* 2. Even with the file opened up, SO_PEERCRED says no. */
        CHECK_MSG(chmod(a->sock, 0666) == 0, "chmod: %m");
        CHECK_MSG(pipe(p) == 0, "pipe");
        pid = fork();
        if (pid == 0) {
                int fd;

                close(p[0]);
                drop_privileges();
                fd = sock_connect(a->sock);
                if (fd < 0)
                        _exit(3);
                /* May fail: the daemon hangs up after saying why. */
                (void)!send(fd, "{\"cmd\":\"detach\"}\n", 17, MSG_NOSIGNAL);
                n = read(fd, buf, sizeof(buf) - 1);
                if (n > 0)
                        (void)!write(p[1], buf, (size_t)n);
                _exit(0);
        }
        close(p[1]);
        n = read(p[0], buf, sizeof(buf) - 1);
        close(p[0]);
        CHECK_MSG(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "nobody could not connect");
        CHECK_MSG(n > 0 && strstr(buf, "\"EPERM\"") && strstr(buf, "uid 65534"), "reply: %s", buf);
        r = ctl_as(true, "detach", "-d", a->d, "-n", "51712", NULL);
        CHECK_MSG(r->status == 4, "nobody's detach exit %d: %s", r->status, r->err);
        CHECK_MSG(chmod(a->sock, 0600) == 0 && chmod(ctl_dir, 0700) == 0, "chmod back");
        CHECK_MSG(simfront_vbd_running(a->vbd) == 1, "the daemon obeyed nobody");
        json_decref(ctl_json(0, "info", ctl("info", "-d", a->d, "-n", "51712", "--json")));
        printf("ok non-root refused (mode 0600, then SO_PEERCRED)\n");
}

static void test_detach_busy(struct vbd *b)
{
        struct load *l = calloc(1, sizeof(*l));
        struct out *r;
        long long state = 0;
        int st;

        cur_test = "detach while busy";
        cur_vbd = b->vbd;
        l->fe = b->fe;
        l->done = calloc(MAX_TAGS, 1);
        l->rnd = 7;
        while (l->completed < 2000) {
                load_fill(l, 32);
                CHECK_MSG(simfront_poll(l->fe, 1000) >= 0, "poll");
        }
        load_fill(l, 1000); /* the ring full of writes */
        r = ctl("detach", "-d", b->d, "-n", "51712");
        CHECK_MSG(r->status == 0 && strstr(r->out, "detached"), "detach: %d %s %s", r->status,
                  r->out, r->err);
        CHECK_R(simfront_vbd_wait(b->vbd, 5000, &st), "vbdd still running after detach");
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "vbdd exit status %d", st);
        /* What it answered before leaving: collect, each exactly once. */
        while (simfront_poll(l->fe, 200) > 0)
                ;
        CHECK_MSG(l->errors == 0, "errors");
        CHECK_MSG(l->completed > 2000, "nothing answered");
        CHECK_R(simfront_vbd_read_backend(b->vbd, "state", &state), "state");
        CHECK_MSG(state == SIMFRONT_XB_CLOSED, "backend state %lld after detach", state);
        CHECK_MSG(access(b->sock, F_OK) < 0 && errno == ENOENT, "socket left behind");
        load_verify_image(l, b->img, true);
        r = ctl("info", "-d", b->d, "-n", "51712");
        CHECK_MSG(r->status == 3, "info after detach: %d", r->status);
        printf("ok detach while busy: %" PRIu64 " answered writes on disk, daemon gone\n",
               l->completed);
        free(l->done);
        free(l);
}

static void test_attach(struct simfront_env *env)
{
        const uint32_t domid = 3;
        struct simfront_opts fo = {.domid = domid, .devid = DEVID, .timeout_ms = 5000};
        struct simfront *fe;
        char img[600], spec[640], data[8192], back[8192];
        struct xs_handle *xs = simfront_env_xs(env);
        unsigned len;
        char *v;
        json_t *j;
        struct out *r;

        cur_test = "attach";
        cur_vbd = NULL;
        snprintf(img, sizeof(img), "%s/attach.img", simfront_env_dir(env));
        make_image(img, IMG_SIZE, 0);
        snprintf(spec, sizeof(spec), "raw:%s", img);
        CHECK_R(simfront_env_domain_create(env, domid), simfront_env_errmsg(env));
        j = ctl_json(
            0, "attach",
            ctl("attach", "-d", "3", "-n", "51712", "--image", spec, "--vbdd", vbdd_sim, "--json"));
        CHECK_MSG(jint(j, "pid") > 0, "attach pid");
        json_decref(j);
        v = xs_read(xs, XBT_NULL, "/local/domain/0/backend/vbd3/3/51712/params", &len);
        CHECK_MSG(v && strcmp(v, spec) == 0, "params %s", v ? v : "(none)");
        free(v);
        v = xs_read(xs, XBT_NULL, "/local/domain/3/device/vbd/51712/backend", &len);
        CHECK_MSG(v && strcmp(v, "/local/domain/0/backend/vbd3/3/51712") == 0, "frontend link");
        free(v);
        r = ctl("attach", "-d", "3", "-n", "51712", "--image", spec, "--vbdd", vbdd_sim);
        CHECK_MSG(r->status == 1 && strstr(r->err, "exists"), "second attach: %d %s", r->status,
                  r->err);
        fe = simfront_new(env, &fo);
        CHECK_MSG(fe, "simfront_new");
        CHECK_R(simfront_connect(fe), simfront_errmsg(fe));
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (char)(i * 7 + 3);
        CHECK_R(simfront_write(fe, 4096, data, sizeof(data)), simfront_errmsg(fe));
        CHECK_R(simfront_read(fe, 4096, back, sizeof(back)), simfront_errmsg(fe));
        CHECK_MSG(memcmp(data, back, sizeof(data)) == 0, "data through an attached VBD");
        r = ctl("detach", "-d", "3", "-n", "51712", "--xenstore");
        CHECK_MSG(r->status == 0, "detach --xenstore: %d %s", r->status, r->err);
        v = xs_read(xs, XBT_NULL, "/local/domain/0/backend/vbd3/3/51712", &len);
        CHECK_MSG(!v, "backend dir left");
        v = xs_read(xs, XBT_NULL, "/local/domain/3/device/vbd/51712", &len);
        CHECK_MSG(!v, "frontend dir left");
        simfront_free(fe);
        /* A spawn that cannot work says why, with the daemon's log. */
        r = ctl("spawn", "-d", "3", "-n", "51712", "--image", spec, "--vbdd", vbdd_sim);
        CHECK_MSG(r->status == 1 && strstr(r->err, "exited") && strstr(r->err, "backend"),
                  "spawn without nodes: %d %s", r->status, r->err);
        printf("ok attach (xenstore + spawn), detach --xenstore, failed spawn reported\n");
}

static char *xs_get(struct xs_handle *xs, const char *path)
{
        unsigned len;

        return xs_read(xs, XBT_NULL, path, &len);
}

/* libxl with backendtype=tap,script=block-vbd3 (Xen 4.19+): the toolstack
 * writes the vbd3 directories in state 1 and waits for InitWait; vbd-ctl
 * watch starts vbdd; libxl runs "block-vbd3 add"; the guest connects; on
 * detach libxl writes online=0 + state 5, waits for 6, runs "remove". */
static void test_xl_flow(struct simfront_env *env)
{
        const char *script = getenv("VBD_BLOCK_SCRIPT");
        const char *be = "/local/domain/0/backend/vbd3/4/51712";
        const char *fe_path = "/local/domain/4/device/vbd/51712";
        struct simfront_opts fo = {.domid = 4, .devid = DEVID, .timeout_ms = 5000};
        struct xs_permissions bperm[2] = {{.id = 0, .perms = XS_PERM_NONE},
                                          {.id = 4, .perms = XS_PERM_READ}};
        struct xs_permissions fperm[2] = {{.id = 4, .perms = XS_PERM_NONE},
                                          {.id = 0, .perms = XS_PERM_READ}};
        struct xs_handle *xs = simfront_env_xs(env);
        char img[600], params[700], path[1024], data[4096], got[4096];
        const char *argv[16];
        struct simfront *fe;
        struct out *r;
        xs_transaction_t t;
        uint64_t t0;
        pid_t watch, sh;
        int o, e, st, fd;
        char *v;

        cur_test = "xl flow";
        cur_vbd = NULL;
        if (!script) {
                printf("skip xl flow: VBD_BLOCK_SCRIPT not set\n");
                return;
        }
        snprintf(img, sizeof(img), "%s/xl.img", simfront_env_dir(env));
        make_image(img, IMG_SIZE, 0);
        snprintf(params, sizeof(params), "aio:%s", img);
        CHECK_R(simfront_env_domain_create(env, 4), simfront_env_errmsg(env));

        /* vbd-watch.service */
        argv[0] = vbd_ctl;
        argv[1] = "--ctl-dir";
        argv[2] = ctl_dir;
        argv[3] = "watch";
        argv[4] = "--vbdd";
        argv[5] = vbdd_sim;
        argv[6] = NULL;
        watch = spawn(argv, false, &o, &e);
        close(o);
        close(e);
        usleep(200000);

        /* libxl's device_disk_add, in one transaction. */
        t = xs_transaction_start(xs);
        CHECK_MSG(t != XBT_NULL, "transaction");
        {
                const char *bkv[] = {"frontend",
                                     fe_path,
                                     "frontend-id",
                                     "4",
                                     "online",
                                     "1",
                                     "removable",
                                     "0",
                                     "bootable",
                                     "1",
                                     "state",
                                     "1",
                                     "dev",
                                     "xvda",
                                     "type",
                                     "vbd3",
                                     "mode",
                                     "w",
                                     "device-type",
                                     "disk",
                                     "discard-enable",
                                     "0",
                                     "specification",
                                     "xen",
                                     "params",
                                     params,
                                     "script",
                                     script,
                                     NULL};
                const char *fkv[] = {"backend",     be,     "backend-id",     "0",
                                     "state",       "1",    "virtual-device", "51712",
                                     "device-type", "disk", "trusted",        "1",
                                     NULL};

                CHECK_MSG(xs_mkdir(xs, t, be) && xs_set_permissions(xs, t, be, bperm, 2), "be");
                CHECK_MSG(xs_mkdir(xs, t, fe_path) && xs_set_permissions(xs, t, fe_path, fperm, 2),
                          "fe");
                for (int i = 0; bkv[i]; i += 2) {
                        snprintf(path, sizeof(path), "%s/%s", be, bkv[i]);
                        CHECK_MSG(xs_write(xs, t, path, bkv[i + 1], strlen(bkv[i + 1])), "write");
                }
                for (int i = 0; fkv[i]; i += 2) {
                        snprintf(path, sizeof(path), "%s/%s", fe_path, fkv[i]);
                        CHECK_MSG(xs_write(xs, t, path, fkv[i + 1], strlen(fkv[i + 1])), "write");
                }
        }
        CHECK_MSG(xs_transaction_end(xs, t, false), "commit: %m");

        /* libxl__wait_device_connection: InitWait within 10 s. */
        snprintf(path, sizeof(path), "%s/state", be);
        for (t0 = vbd_now_ms();; usleep(20000)) {
                v = xs_get(xs, path);
                if (v && strcmp(v, "2") == 0)
                        break;
                free(v);
                CHECK_MSG(vbd_now_ms() - t0 < 10000,
                          "no InitWait: vbd-ctl watch did not start vbdd");
        }
        free(v);

        /* The hotplug script, as libxl runs it. */
        setenv("XENBUS_PATH", be, 1);
        setenv("VBD_RUNTIME_DIR", ctl_dir, 1);
        argv[0] = "/bin/sh";
        argv[1] = script;
        argv[2] = "add";
        argv[3] = NULL;
        {
                struct out *res = calloc(1, sizeof(*res));

                sh = spawn(argv, false, &o, &e);
                collect(sh, o, e, res);
                CHECK_MSG(res->status == 0, "block-vbd3 add: %d %s", res->status, res->err);
                free(res);
        }
        snprintf(path, sizeof(path), "%s/hotplug-status", be);
        v = xs_get(xs, path);
        CHECK_MSG(v && strcmp(v, "connected") == 0, "hotplug-status %s", v ? v : "-");
        free(v);
        {
                json_t *j = ctl_json(0, "info", ctl("info", "-d", "4", "-n", "51712", "--json"));

                snprintf(path, sizeof(path), "raw:%s", img);
                CHECK_MSG(strcmp(jstr(j, "image"), path) == 0, "params aio: became %s",
                          jstr(j, "image"));
                json_decref(j);
        }

        /* The guest. */
        fe = simfront_new(env, &fo);
        CHECK_MSG(fe, "simfront_new");
        CHECK_R(simfront_connect(fe), simfront_errmsg(fe));
        memset(data, 0xa5, sizeof(data));
        CHECK_R(simfront_write(fe, 8192, data, sizeof(data)), simfront_errmsg(fe));
        CHECK_R(simfront_flush(fe), simfront_errmsg(fe));
        fd = open(img, O_RDONLY);
        CHECK_MSG(fd >= 0 && pread(fd, got, sizeof(got), 8192) == (ssize_t)sizeof(got) &&
                      memcmp(got, data, sizeof(data)) == 0,
                  "data not in the image");
        close(fd);

        /* xl block-detach: online 0, state 5; the guest closes; vbdd exits. */
        snprintf(path, sizeof(path), "%s/online", be);
        CHECK_MSG(xs_write(xs, XBT_NULL, path, "0", 1), "online");
        snprintf(path, sizeof(path), "%s/state", be);
        CHECK_MSG(xs_write(xs, XBT_NULL, path, "5", 1), "state");
        CHECK_R(simfront_disconnect(fe), simfront_errmsg(fe));
        simfront_free(fe);
        snprintf(path, sizeof(path), "%s/vbdd-4-51712.sock", ctl_dir);
        for (t0 = vbd_now_ms(); access(path, F_OK) == 0; usleep(20000))
                CHECK_MSG(vbd_now_ms() - t0 < 5000, "vbdd did not exit after the detach");
        argv[2] = "remove";
        {
                struct out *res = calloc(1, sizeof(*res));

                sh = spawn(argv, false, &o, &e);
                collect(sh, o, e, res);
                CHECK_MSG(res->status == 0, "block-vbd3 remove: %d %s", res->status, res->err);
                free(res);
        }
        CHECK_MSG(xs_rm(xs, XBT_NULL, be) && xs_rm(xs, XBT_NULL, fe_path), "rm");
        usleep(1200000); /* a watcher rescan: nothing to restart */
        r = ctl("list", "--json", "-d", "4");
        CHECK_MSG(r->status == 0 && strcmp(r->out, "[]\n") == 0, "watch restarted vbdd: %s",
                  r->out);

        /* The script refuses what it cannot parse. */
        setenv("XENBUS_PATH", "/local/domain/0/backend/vbd3/x/y", 1);
        argv[2] = "add";
        {
                struct out *res = calloc(1, sizeof(*res));

                sh = spawn(argv, false, &o, &e);
                collect(sh, o, e, res);
                CHECK_MSG(res->status == 1 && strstr(res->err, "cannot parse"), "bad path: %d %s",
                          res->status, res->err);
                free(res);
        }
        unsetenv("XENBUS_PATH");
        unsetenv("VBD_RUNTIME_DIR");

        kill(watch, SIGTERM);
        CHECK_MSG(waitpid(watch, &st, 0) == watch && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "watch exit %d", st);
        printf("ok xl flow: vbd-ctl watch + block-vbd3 add/remove, aio: params\n");
}

int main(int argc, char **argv)
{
        struct simfront_env *env;
        struct vbd a = {0}, b = {0};

        setvbuf(stdout, NULL, _IONBF, 0);
        signal(SIGPIPE, SIG_IGN);
        check_fatal = true;
        check_context = check_context_vbd;
        vbd_ctl = getenv("VBD_CTL");
        vbdd_sim = getenv("VBD_SIM_VBDD");
        if (!vbd_ctl || !vbdd_sim) {
                fprintf(stderr, "set VBD_CTL and VBD_SIM_VBDD\n");
                return 77;
        }
        env = simfront_env_new(NULL);
        CHECK_MSG(env, "simfront_env_new: %m");
        /* Also vbdd-sim's default: $VBD_SIM_DIR. */
        snprintf(ctl_dir, sizeof(ctl_dir), "%s", simfront_env_dir(env));
        /* vbd-ctl attach/spawn and the daemons they start use this simulation. */
        setenv("XENSTORED_PATH", simfront_env_xs_path(env), 1);
        setenv("VBD_SIM_DIR", simfront_env_dir(env), 1);

        if (argc > 1 && strcmp(argv[1], "reopen-nbd") == 0) {
                int rc = test_reopen_nbd(env);

                simfront_env_free(env);
                if (rc == 0)
                        printf("all ctl reopen-nbd tests passed\n");
                return rc;
        }
        vbd_start(env, &a, 1, true);
        vbd_start(env, &b, 2, false);
        test_list(&a, &b);
        {
                struct simfront_opts fo = {.domid = 2, .devid = DEVID, .timeout_ms = 5000};

                b.fe = simfront_new(env, &fo);
                CHECK_MSG(b.fe, "simfront_new");
                simfront_set_check(b.fe, alive, b.vbd);
                CHECK_R(simfront_connect(b.fe), simfront_errmsg(b.fe));
        }
        test_pause_under_load(&a);
        test_stats_formats(&a);
        test_reopen(env, &a);
        test_reopen_locks(env, &a);
        test_socket_limits(&a);
        test_not_root(env, &a);
        test_detach_busy(&b);
        test_attach(env);
        test_xl_flow(env);

        simfront_free(a.fe);
        simfront_free(b.fe);
        simfront_vbd_free(a.vbd);
        simfront_vbd_free(b.vbd);
        simfront_env_free(env);
        printf("all ctl tests passed\n");
        return 0;
}
