/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device (src/device.c) and jobs (src/job.c): counted pause holds over
 * users that drain later, swaps refused until drained, reopen in every
 * user; one job per type, options from JSON, asynchronous answers, cancel,
 * the lifecycle's terminal states.
 */
#include <errno.h>
#include <ev.h>
#include <string.h>

#include "device.h"
#include "image.h"
#include "job.h"
#include "unit-test.h"
#include "vbd/driver.h"
#include "vbd/macro.h"

/* ---- a user whose pause completes when the test says so ---- */

struct fake_user {
        bool paused;
        void (*done)(void *opaque);
        void *opaque;
        struct vbd_image *img;
        int pauses, resumes, set_images;
        int fail_set_image;
};

static void fu_pause(void *user, void (*done)(void *opaque), void *opaque)
{
        struct fake_user *u = user;

        u->paused = true;
        u->pauses++;
        u->done = done;
        u->opaque = opaque;
}

static void fu_resume(void *user)
{
        struct fake_user *u = user;

        u->paused = false;
        u->done = NULL;
        u->resumes++;
}

static int fu_set_image(void *user, struct vbd_image *img)
{
        struct fake_user *u = user;

        u->set_images++;
        if (u->fail_set_image)
                return u->fail_set_image;
        u->img = img;
        return 0;
}

static void fu_drain(struct fake_user *u)
{
        void (*done)(void *) = u->done;

        u->done = NULL;
        if (done)
                done(u->opaque);
}

static const struct vbd_device_user_ops fu_ops = {fu_pause, fu_resume, fu_set_image};

static int count_cb;
static void counted(void *opaque)
{
        (*(int *)opaque)++;
        count_cb++;
}

static struct vbd_device *new_dev(struct ev_loop *loop, bool ro)
{
        struct vbd_err err = {0};
        struct vbd_image *img = vbd_image_open("null:1M", ro, NULL, NULL, &err);

        REQUIRE(img);
        return vbd_device_new(loop, img, ro, NULL);
}

static void test_holds(struct ev_loop *loop)
{
        struct vbd_device *dev = new_dev(loop, false);
        struct fake_user a = {0}, b = {0};
        struct vbd_err err = {0};
        int d1 = 0, d2 = 0, d3 = 0;

        CHECK_EQ(vbd_device_add_user(dev, "a", &fu_ops, &a), 0);
        CHECK_EQ(vbd_device_add_user(dev, "b", &fu_ops, &b), 0);
        CHECK(!vbd_device_paused(dev) && !vbd_device_drained(dev));

        vbd_device_pause(dev, counted, &d1);
        CHECK(a.paused && b.paused && vbd_device_paused(dev));
        vbd_device_pause(dev, counted, &d2); /* a second hold while draining: waits too */
        CHECK_EQ(a.pauses, 1);
        CHECK_EQ(d1 + d2, 0);
        fu_drain(&a);
        CHECK(!vbd_device_drained(dev)); /* b still has requests in flight */
        CHECK_EQ(d1 + d2, 0);
        CHECK_EQ(vbd_device_push_filter(dev, "null", &err), -EBUSY);
        fu_drain(&b);
        CHECK(vbd_device_drained(dev));
        CHECK_EQ(d1, 1);
        CHECK_EQ(d2, 1);
        vbd_device_pause(dev, counted, &d3); /* drained already: at once */
        CHECK_EQ(d3, 1);

        /* Serving again only when every holder resumed. */
        vbd_device_resume(dev);
        vbd_device_resume(dev);
        CHECK(a.paused && vbd_device_paused(dev) && vbd_device_drained(dev));
        CHECK_EQ(a.resumes, 0);
        vbd_device_resume(dev);
        CHECK(!a.paused && !b.paused && !vbd_device_paused(dev));
        CHECK_EQ(a.resumes, 1);
        vbd_device_resume(dev); /* one too many: ignored */
        CHECK(!vbd_device_paused(dev));

        /* A pause resumed before the drain: its done never runs. */
        d1 = 0;
        vbd_device_pause(dev, counted, &d1);
        vbd_device_resume(dev);
        fu_drain(&a);
        fu_drain(&b);
        CHECK_EQ(d1, 0);
        CHECK(!vbd_device_paused(dev));

        /* A waiter that goes away is forgotten; the others still hear. */
        d1 = d2 = 0;
        vbd_device_pause(dev, counted, &d1);
        vbd_device_pause(dev, counted, &d2);
        vbd_device_forget(dev, &d1);
        fu_drain(&a);
        fu_drain(&b);
        CHECK_EQ(d1, 0);
        CHECK_EQ(d2, 1);
        vbd_device_resume(dev);
        vbd_device_resume(dev);

        CHECK(vbd_device_find_layer(dev, "null") == vbd_device_image(dev));
        CHECK(vbd_device_find_layer(dev, "mirror") == NULL);
        vbd_device_remove_user(dev, &a);
        vbd_device_remove_user(dev, &b);
        vbd_device_free(dev);
}

struct reopen_result {
        int calls, status;
        char msg[256];
};

static void reopen_done(void *opaque, int status, const struct vbd_err *err)
{
        struct reopen_result *r = opaque;

        r->calls++;
        r->status = status;
        snprintf(r->msg, sizeof(r->msg), "%s", err->msg);
}

static void test_reopen(struct ev_loop *loop)
{
        struct vbd_device *dev = new_dev(loop, false);
        struct fake_user a = {0}, b = {0};
        struct reopen_result rr = {0};
        struct vbd_image *old = vbd_device_image(dev);

        vbd_device_add_user(dev, "a", &fu_ops, &a);
        vbd_device_add_user(dev, "b", &fu_ops, &b);
        vbd_device_reopen(dev, "null:2M", reopen_done, &rr);
        CHECK_EQ(rr.calls, 0); /* waits for the drain */
        fu_drain(&a);
        fu_drain(&b);
        CHECK_EQ(rr.calls, 1);
        CHECK_EQ(rr.status, 0);
        CHECK(vbd_device_image(dev) != old);
        CHECK(a.img == vbd_device_image(dev) && b.img == a.img);
        CHECK_EQ(vbd_image_info(vbd_device_image(dev))->size, 2 << 20);
        CHECK(!vbd_device_paused(dev) && !a.paused); /* its own hold is gone */

        /* A user that cannot take the new image: every user keeps the old one. */
        old = vbd_device_image(dev);
        b.fail_set_image = -EIO;
        rr.calls = 0;
        vbd_device_pause(dev, NULL, NULL);
        fu_drain(&a);
        fu_drain(&b);
        vbd_device_reopen(dev, "null:4M", reopen_done, &rr); /* drained: inline */
        CHECK_EQ(rr.calls, 1);
        CHECK_EQ(rr.status, -EIO);
        CHECK(vbd_device_image(dev) == old && a.img == old);
        CHECK(vbd_device_paused(dev)); /* the caller's hold stays */

        /* A bad spec. */
        b.fail_set_image = 0;
        rr.calls = 0;
        vbd_device_reopen(dev, "nosuchdriver:1", reopen_done, &rr);
        CHECK_EQ(rr.calls, 1);
        CHECK(rr.status < 0 && strstr(rr.msg, "nosuchdriver"));
        vbd_device_resume(dev);

        /* A user that cannot change images at all refuses the swap. */
        vbd_device_add_user(dev, "the NBD export", NULL, &rr);
        vbd_device_pause(dev, NULL, NULL);
        fu_drain(&a);
        fu_drain(&b);
        rr.calls = 0;
        vbd_device_reopen(dev, "null:4M", reopen_done, &rr);
        CHECK_EQ(rr.status, -EBUSY);
        CHECK(strstr(rr.msg, "the NBD export"));
        vbd_device_resume(dev);
        vbd_device_free(dev); /* removes the users */
}

/* ---- a job type ---- */

enum { O_TO, O_COUNT, O_FLAG, O_SIZE, O_N };
static const struct vbd_opt_desc fake_opts[O_N] = {
    [O_TO] = {.name = "to", .type = VBD_OPT_STRING, .flags = VBD_OPT_REQUIRED | VBD_OPT_NONEMPTY},
    [O_COUNT] = VBD_OPT_UINT_DEF("count", 1, 10, "3", "a count"),
    [O_FLAG] = VBD_OPT_BOOL_DEF("flag", NULL, "a flag"),
    [O_SIZE] = VBD_OPT_SIZE_DEF("size", 0, 0, "1M", "a size"),
};

struct fake_job {
        char to[64];
        unsigned count;
        bool flag;
        uint64_t size;
        bool async; /* start answers later */
        int freed;
};

static struct vbd_job *last_job;
static int frees;
static bool start_async;

static int fake_start(struct vbd_job *job, const struct vbd_opt_value *v, struct vbd_err *err)
{
        struct fake_job *f = vbd_job_state(job);

        if (strcmp(v[O_TO].s, "refuse") == 0)
                return vbd_err_set(err, -EROFS, "refused");
        snprintf(f->to, sizeof(f->to), "%s", v[O_TO].s);
        f->count = (unsigned)v[O_COUNT].u;
        f->flag = v[O_FLAG].set && v[O_FLAG].b;
        f->size = v[O_SIZE].u;
        last_job = job;
        vbd_job_set_state(job, VBD_JOB_RUNNING, NULL);
        return start_async ? 1 : 0;
}

static void fake_status(struct vbd_job *job, json_t *obj)
{
        struct fake_job *f = vbd_job_state(job);

        json_object_set_new(obj, "state", json_string(vbd_job_state_name(vbd_job_get_state(job))));
        json_object_set_new(obj, "to", json_string(f->to));
        json_object_set_new(obj, "count", json_integer(f->count));
        json_object_set_new(obj, "flag", json_boolean(f->flag));
        json_object_set_new(obj, "size", json_integer((json_int_t)f->size));
}

static int fake_complete(struct vbd_job *job, struct vbd_err *err)
{
        if (vbd_job_get_state(job) != VBD_JOB_READY)
                return vbd_err_set(err, -EAGAIN, "not ready");
        vbd_job_set_state(job, VBD_JOB_COMPLETING, NULL);
        return 1;
}

static int fake_cancel(struct vbd_job *job, struct vbd_err *err)
{
        if (vbd_job_state_terminal(vbd_job_get_state(job)))
                return vbd_err_set(err, -ENOENT, "over");
        vbd_job_set_state(job, VBD_JOB_CANCELLED, NULL);
        return 0;
}

static void fake_free(struct vbd_job *job)
{
        frees++;
}

static void fake_none(struct vbd_device *dev, json_t *obj)
{
        json_object_set_new(obj, "state", json_string("never"));
}

static const struct vbd_job_type fake_type = {
    .name = "fake",
    .opts = fake_opts,
    .nopts = O_N,
    .state_size = sizeof(struct fake_job),
    .start = fake_start,
    .status = fake_status,
    .complete = fake_complete,
    .cancel = fake_cancel,
    .free = fake_free,
    .status_none = fake_none,
};

struct answer {
        int calls, status;
        char msg[256];
        json_t *result;
};

static void answer(void *opaque, int status, const char *msg, json_t *result)
{
        struct answer *a = opaque;

        a->calls++;
        a->status = status;
        snprintf(a->msg, sizeof(a->msg), "%s", msg ? msg : "");
        json_decref(a->result);
        a->result = result;
}

static int start(struct vbd_device *dev, const char *args_json, json_t **ret, struct vbd_err *err,
                 struct answer *a)
{
        json_t *args = json_loads(args_json, 0, NULL);
        int r;

        REQUIRE(args);
        memset(err, 0, sizeof(*err));
        *ret = NULL;
        r = vbd_job_start(dev, &fake_type, args, ret, err, answer, a);
        json_decref(args);
        return r;
}

static const char *state_of(json_t *obj)
{
        return json_string_value(json_object_get(obj, "state"));
}

static void test_job_args(struct ev_loop *loop)
{
        struct vbd_device *dev = new_dev(loop, false);
        struct vbd_err err;
        struct answer a = {0};
        json_t *ret, *st;
        static const char *const bad[] = {
            "{}",                            /* to is required */
            "{\"to\": \"\"}",                /* nonempty */
            "{\"to\": 5}",                   /* a string */
            "{\"to\": \"x\", \"count\": 0}", /* bounds */
            "{\"to\": \"x\", \"count\": 11}",
            "{\"to\": \"x\", \"count\": \"3\"}", /* an integer */
            "{\"to\": \"x\", \"count\": -1}",
            "{\"to\": \"x\", \"flag\": \"yes\"}", /* a boolean */
            "{\"to\": \"x\", \"flag\": 1}",
            "{\"to\": \"x\", \"size\": 1.5}",
            "{\"to\": \"refuse\"}", /* the type's own refusal keeps its code: below */
        };

        for (unsigned i = 0; i < VBD_ARRAY_SIZE(bad) - 1; i++) {
                CHECK_EQ(start(dev, bad[i], &ret, &err, &a), -EINVAL);
                CHECK(err.msg[0]);
        }
        CHECK_EQ(start(dev, "{\"to\": \"x\", \"colour\": 1}", &ret, &err, &a), -EINVAL);
        CHECK(strstr(err.msg, "\"colour\""));
        CHECK_EQ(start(dev, bad[VBD_ARRAY_SIZE(bad) - 1], &ret, &err, &a), -EROFS);
        CHECK_EQ(frees, 1); /* the refused start was freed */
        CHECK(vbd_job_get(dev, &fake_type) == NULL);
        st = vbd_job_status(dev, &fake_type);
        CHECK(!strcmp(state_of(st), "never"));
        json_decref(st);

        CHECK_EQ(start(dev, "{\"to\": \"x\", \"count\": 7, \"flag\": true, \"size\": 2048}", &ret,
                       &err, &a),
                 0);
        REQUIRE(ret);
        CHECK(!strcmp(state_of(ret), "running"));
        CHECK_EQ(json_integer_value(json_object_get(ret, "count")), 7);
        CHECK(json_is_true(json_object_get(ret, "flag")));
        CHECK_EQ(json_integer_value(json_object_get(ret, "size")), 2048);
        json_decref(ret);
        /* Defaults. */
        vbd_job_set_state(last_job, VBD_JOB_DONE, NULL);
        CHECK_EQ(start(dev, "{\"to\": \"y\"}", &ret, &err, &a), 0);
        CHECK_EQ(json_integer_value(json_object_get(ret, "count")), 3);
        CHECK(json_is_false(json_object_get(ret, "flag")));
        CHECK_EQ(json_integer_value(json_object_get(ret, "size")), 1 << 20);
        json_decref(ret);
        vbd_device_free(dev);
        frees = 0;
}

static void test_job_lifecycle(struct ev_loop *loop)
{
        struct vbd_device *dev = new_dev(loop, false);
        struct vbd_err err = {0};
        struct answer a = {0}, b = {0};
        struct vbd_job *j1;
        json_t *ret = NULL;

        /* Nothing to complete or cancel yet. */
        CHECK_EQ(vbd_job_cancel(dev, &fake_type, &ret, &err, answer, &a), -ENOENT);
        CHECK_EQ(vbd_job_complete(dev, &fake_type, &ret, &err, answer, &a), -ENOENT);

        CHECK_EQ(start(dev, "{\"to\": \"x\"}", &ret, &err, &a), 0);
        json_decref(ret);
        j1 = last_job;
        CHECK_EQ(vbd_jobs_check_idle(dev, &err), -EBUSY);
        /* One job per type: a second start while running is refused. */
        CHECK_EQ(start(dev, "{\"to\": \"y\"}", &ret, &err, &a), -EBUSY);
        CHECK(strstr(err.msg, "running"));
        CHECK(vbd_job_get(dev, &fake_type) == j1);

        /* complete: not ready, then ready and answered later. */
        memset(&err, 0, sizeof(err));
        CHECK_EQ(vbd_job_complete(dev, &fake_type, &ret, &err, answer, &a), -EAGAIN);
        vbd_job_set_state(j1, VBD_JOB_READY, NULL);
        CHECK_EQ(vbd_job_complete(dev, &fake_type, &ret, &err, answer, &a), 1);
        CHECK_EQ(a.calls, 0);
        /* Busy: another complete is refused, a cancel may overtake. */
        memset(&err, 0, sizeof(err));
        CHECK_EQ(vbd_job_complete(dev, &fake_type, &ret, &err, answer, &b), -EBUSY);
        vbd_job_set_state(j1, VBD_JOB_DONE, NULL);
        vbd_job_reply(j1, 0, NULL);
        CHECK_EQ(a.calls, 1);
        CHECK_EQ(a.status, 0);
        CHECK(a.result && !strcmp(state_of(a.result), "done"));
        vbd_job_reply(j1, 0, NULL); /* nobody asked: ignored */
        CHECK_EQ(a.calls, 1);
        CHECK_EQ(vbd_jobs_check_idle(dev, &err), 0);

        /* Over: cancel says so; a new start replaces the job. */
        memset(&err, 0, sizeof(err));
        CHECK_EQ(vbd_job_cancel(dev, &fake_type, &ret, &err, answer, &a), -ENOENT);
        CHECK_EQ(start(dev, "{\"to\": \"z\"}", &ret, &err, &a), 0);
        json_decref(ret);
        CHECK(vbd_job_get(dev, &fake_type) == last_job && last_job != j1);
        CHECK_EQ(frees, 1);
        CHECK_EQ(vbd_job_cancel(dev, &fake_type, &ret, &err, answer, &a), 0);
        CHECK(!strcmp(state_of(ret), "cancelled"));
        json_decref(ret);

        /* An asynchronous start: answered once; failed, it is as if never started. */
        start_async = true;
        a.calls = 0;
        CHECK_EQ(start(dev, "{\"to\": \"w\"}", &ret, &err, &a), 1);
        CHECK(ret == NULL);
        vbd_job_reply(last_job, -ECONNREFUSED, "partner said no");
        CHECK_EQ(a.calls, 1);
        CHECK_EQ(a.status, -ECONNREFUSED);
        CHECK(!strcmp(a.msg, "partner said no"));
        CHECK(a.result == NULL);
        /* the cancelled one is still the device's job */
        ret = vbd_job_status(dev, &fake_type);
        CHECK(!strcmp(state_of(ret), "cancelled") &&
              !strcmp(json_string_value(json_object_get(ret, "to")), "z"));
        json_decref(ret);
        /* ... succeeded: it replaces the older one. */
        CHECK_EQ(start(dev, "{\"to\": \"v\"}", &ret, &err, &a), 1);
        vbd_jobs_forget(dev, &a); /* the client went away */
        vbd_job_reply(last_job, 0, NULL);
        CHECK_EQ(a.calls, 1); /* not called again */
        ret = vbd_job_status(dev, &fake_type);
        CHECK(!strcmp(json_string_value(json_object_get(ret, "to")), "v"));
        json_decref(ret);
        start_async = false;
        json_decref(a.result);
        vbd_device_free(dev);
}

int main(void)
{
        struct ev_loop *loop = ev_default_loop(0);

        test_holds(loop);
        test_reopen(loop);
        test_job_args(loop);
        test_job_lifecycle(loop);
        return check_result("job");
}
