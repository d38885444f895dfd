/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hostile.h"

static struct hostile *current;

static void dump_log(const char *what, struct simfront_vbd *vbd)
{
        char *log = vbd ? simfront_vbd_read_log(vbd) : NULL;

        fprintf(stderr, "--- %s vbdd log ---\n%s--- end ---\n", what, log ? log : "(none)\n");
        free(log);
}

static void h_context(int err)
{
        fprintf(stderr, "FAIL %s\n", current ? current->name : "?");
        if (current) {
                dump_log("victim", current->victim_vbd);
                dump_log("bystander", current->bystander_vbd);
                simfront_env_free(current->env); /* kill the daemons, remove the dir */
        }
}

__attribute__((constructor)) static void h_checks_fatal(void)
{
        check_fatal = true;
        check_context = h_context;
}
static void make_image(const char *path, unsigned seed)
{
        static char buf[65536];
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);

        CHECK_MSG(fd >= 0, "open %s: %s", path, strerror(errno));
        for (uint64_t off = 0; off < IMG_SIZE; off += sizeof(buf)) {
                for (size_t i = 0; i < sizeof(buf); i++)
                        buf[i] = (char)((off + i) * 13 + seed + (off + i) / 511);
                CHECK_MSG(pwrite(fd, buf, sizeof(buf), (off_t)off) == (ssize_t)sizeof(buf),
                          "pwrite");
        }
        close(fd);
}

static int victim_alive_check(void *opaque)
{
        return simfront_vbd_running(opaque) == 1 ? 0 : -ECHILD;
}

static struct simfront_vbd *add_vbd(struct hostile *h, uint32_t domid, const char *img,
                                    const char *mode, unsigned max_queues)
{
        struct simfront_vbd_opts o = {.domid = domid, .devid = DEVID, .mode = mode};
        struct simfront_vbd *vbd;
        char spec[4200], mq[16];
        const char *args[] = {"--max-queues", mq, NULL};

        if (max_queues) {
                snprintf(mq, sizeof(mq), "%u", max_queues);
                o.extra_args = args;
        }

        snprintf(spec, sizeof(spec), "raw:%s", img);
        o.image = spec;
        CHECK_MSG(simfront_env_domain_create(h->env, domid) >= 0, "%s",
                  simfront_env_errmsg(h->env));
        CHECK_MSG(simfront_vbd_add(h->env, &o, &vbd) >= 0, "%s", simfront_env_errmsg(h->env));
        return vbd;
}

void h_setup(struct hostile *h, const char *name, const char *victim_mode, bool connect)
{
        h_setup_protocol(h, name, victim_mode, connect, NULL);
}

static void setup(struct hostile *h, const char *name, const char *victim_mode, bool connect,
                  const char *victim_protocol, unsigned max_queues, unsigned queues);

void h_setup_protocol(struct hostile *h, const char *name, const char *victim_mode, bool connect,
                      const char *victim_protocol)
{
        setup(h, name, victim_mode, connect, victim_protocol, 0, 0);
}

void h_setup_queues(struct hostile *h, const char *name, bool connect, unsigned max_queues,
                    unsigned queues)
{
        setup(h, name, "w", connect, NULL, max_queues, queues);
}

static void setup(struct hostile *h, const char *name, const char *victim_mode, bool connect,
                  const char *victim_protocol, unsigned max_queues, unsigned queues)
{
        struct simfront_opts fo = {.devid = DEVID};

        memset(h, 0, sizeof(*h));
        h->name = name;
        current = h;
        h->env = simfront_env_new(NULL);
        CHECK_MSG(h->env, "simfront_env_new: %s", strerror(errno));
        snprintf(h->victim_img, sizeof(h->victim_img), "%s/victim.img", simfront_env_dir(h->env));
        snprintf(h->bystander_img, sizeof(h->bystander_img), "%s/bystander.img",
                 simfront_env_dir(h->env));
        make_image(h->victim_img, 1);
        make_image(h->bystander_img, 2);
        h->victim_vbd = add_vbd(h, VICTIM_DOMID, h->victim_img, victim_mode, max_queues);
        h->bystander_vbd = add_vbd(h, BYSTANDER_DOMID, h->bystander_img, "w", 0);

        fo.domid = BYSTANDER_DOMID;
        h->bystander = simfront_new(h->env, &fo);
        CHECK_MSG(h->bystander, "simfront_new: %s", strerror(errno));
        simfront_set_check(h->bystander, victim_alive_check, h->bystander_vbd);
        CHECK_MSG(simfront_connect(h->bystander) >= 0, "bystander connect: %s",
                  simfront_errmsg(h->bystander));

        fo.domid = VICTIM_DOMID;
        fo.protocol = victim_protocol;
        fo.queues = queues;
        h->victim = simfront_new(h->env, &fo);
        CHECK_MSG(h->victim, "simfront_new: %s", strerror(errno));
        simfront_set_check(h->victim, victim_alive_check, h->victim_vbd);
        if (connect)
                CHECK_MSG(simfront_connect(h->victim) >= 0, "victim connect: %s",
                          simfront_errmsg(h->victim));
        h_bystander_io(h);
}

static void expect_clean_exit(struct simfront_vbd *vbd, const char *what)
{
        int st = -1;

        CHECK_MSG(simfront_vbd_detach(vbd, SIMFRONT_DETACH_REMOVE) >= 0, "detach %s", what);
        CHECK_MSG(simfront_vbd_wait(vbd, 10000, &st) >= 0, "%s vbdd did not exit after detach",
                  what);
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s vbdd exit status %#x", what, st);
}

void h_teardown(struct hostile *h)
{
        h_bystander_io(h);
        h_victim_alive(h);
        simfront_free(h->victim);
        h->victim = NULL;
        simfront_free(h->bystander);
        h->bystander = NULL;
        expect_clean_exit(h->victim_vbd, "victim");
        expect_clean_exit(h->bystander_vbd, "bystander");
        if (getenv("HOSTILE_VERBOSE"))
                dump_log("victim", h->victim_vbd);
        current = NULL;
        simfront_env_free(h->env);
        printf("PASS %s\n", h->name);
}

void h_bystander_io(struct hostile *h)
{
        static char w[3 * 4096 + 512], r[sizeof(w)];
        uint64_t off = ((uint64_t)(h->bystander_round * 7919u) % (IMG_SIZE / 512 - 64)) * 512;
        int fd;

        h->bystander_round++;
        for (size_t i = 0; i < sizeof(w); i++)
                w[i] = (char)(i * 17 + h->bystander_round);
        CHECK_MSG(simfront_write(h->bystander, off, w, sizeof(w)) >= 0, "bystander write: %s",
                  simfront_errmsg(h->bystander));
        CHECK_MSG(simfront_flush(h->bystander) >= 0, "bystander flush: %s",
                  simfront_errmsg(h->bystander));
        memset(r, 0, sizeof(r));
        CHECK_MSG(simfront_read(h->bystander, off, r, sizeof(r)) >= 0, "bystander read: %s",
                  simfront_errmsg(h->bystander));
        CHECK_MSG(!memcmp(w, r, sizeof(w)), "bystander read-back differs");
        fd = open(h->bystander_img, O_RDONLY);
        CHECK_MSG(fd >= 0 && pread(fd, r, sizeof(r), (off_t)off) == (ssize_t)sizeof(r),
                  "read bystander image");
        close(fd);
        CHECK_MSG(!memcmp(w, r, sizeof(w)), "bystander image differs");
}

void h_victim_alive(struct hostile *h)
{
        CHECK_MSG(simfront_vbd_running(h->victim_vbd) == 1, "the victim vbdd died");
}

void h_expect_log(struct hostile *h, const char *needle)
{
        for (int i = 0; i < 200; i++) {
                char *log = simfront_vbd_read_log(h->victim_vbd);
                bool found = log && strstr(log, needle);

                free(log);
                if (found)
                        return;
                usleep(10000);
        }
        CHECK_FAIL("victim log lacks '%s'", needle);
}

int16_t h_raw_request(struct hostile *h, const blkif_request_t *req)
{
        blkif_response_t rsp;
        int r;

        CHECK_MSG(simfront_raw_put(h->victim, req, sizeof(*req)) >= 0, "raw put");
        simfront_raw_push(h->victim);
        CHECK_MSG(simfront_raw_notify(h->victim) >= 0, "raw notify");
        r = simfront_raw_get_response(h->victim, &rsp, 5000);
        CHECK_MSG(r == 1, "no response to request id %" PRIu64 " op %u (r=%d)", req->id,
                  req->operation, r);
        CHECK_MSG(rsp.id == req->id, "response id %" PRIu64 " for request %" PRIu64, rsp.id,
                  req->id);
        return rsp.status;
}

void h_image_read(struct hostile *h, uint64_t off, void *buf, size_t len)
{
        int fd = open(h->victim_img, O_RDONLY);

        CHECK_MSG(fd >= 0 && pread(fd, buf, len, (off_t)off) == (ssize_t)len, "read victim image");
        close(fd);
}
