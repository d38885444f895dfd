/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl stats: requests, bytes, errors and latency percentiles per
 * operation; for one daemon (-d/-n) or all of them.  --prometheus prints
 * the Prometheus text exposition format, for node_exporter's textfile
 * collector (vbd-ctl stats --prometheus > DIR/vbd.prom.$$ && mv ...).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vbd-ctl.h"
#include "vbd/macro.h"

static const char *const ops[] = {"read", "write", "flush", "discard", "other"};

static void print_human(json_t *s)
{
        json_t *opsj = json_object_get(s, "ops");

        printf("%lld/%lld  %s  %s  inflight %lld  uptime %lld s\n", vbdctl_jint(s, "domid"),
               vbdctl_jint(s, "devid"), vbdctl_jstr(s, "state"), vbdctl_jstr(s, "image"),
               vbdctl_jint(s, "inflight"), vbdctl_jint(s, "uptime_s"));
        printf("  %-8s %12s %16s %8s %8s %8s %8s %8s %9s\n", "op", "requests", "bytes", "errors",
               "avg_us", "p50_us", "p90_us", "p99_us", "p99.9_us");
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(ops); i++) {
                json_t *o = json_object_get(opsj, ops[i]);

                printf("  %-8s %12lld %16lld %8lld %8lld %8lld %8lld %8lld %9lld\n", ops[i],
                       vbdctl_jint(o, "requests"), vbdctl_jint(o, "bytes"),
                       vbdctl_jint(o, "errors"), vbdctl_jint(o, "lat_avg_us"),
                       vbdctl_jint(o, "lat_p50_us"), vbdctl_jint(o, "lat_p90_us"),
                       vbdctl_jint(o, "lat_p99_us"), vbdctl_jint(o, "lat_p999_us"));
        }
        printf("  bad requests %lld, grant errors %lld, notifies %lld, batches %lld\n",
               vbdctl_jint(s, "bad_requests"), vbdctl_jint(s, "grant_errors"),
               vbdctl_jint(s, "notifies"), vbdctl_jint(s, "batches"));
        json_t *qr = json_object_get(s, "queue_requests");
        if (json_is_array(qr) && json_array_size(qr) > 0) {
                printf("  queues %lld, requests per queue", vbdctl_jint(s, "queues"));
                for (size_t i = 0; i < json_array_size(qr); i++)
                        printf(" %lld", (long long)json_integer_value(json_array_get(qr, i)));
                printf("\n");
        }
}

static void prom_header(const char *name, const char *type, const char *help)
{
        printf("# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* All daemons' stats as one exposition: each metric family once. */
static void print_prometheus(json_t *all)
{
        static const struct {
                const char *metric, *key, *help;
        } counters[] = {
            {"vbd_requests_total", "requests", "Requests completed, by operation."},
            {"vbd_bytes_total", "bytes", "Bytes transferred, by operation."},
            {"vbd_errors_total", "errors", "Requests answered with an error, by operation."},
        };
        static const struct {
                const char *metric, *key, *type, *help;
        } globals[] = {
            {"vbd_inflight_requests", "inflight", "gauge", "Requests taken and not answered."},
            {"vbd_bad_requests_total", "bad_requests", "counter", "Malformed guest requests."},
            {"vbd_grant_errors_total", "grant_errors", "counter", "Failed grant copies."},
            {"vbd_uptime_seconds", "uptime_s", "gauge", "Seconds since the daemon started."},
        };
        size_t i;
        json_t *s;

#define LABELS(s) vbdctl_jint(s, "domid"), vbdctl_jint(s, "devid")
        prom_header("vbd_up", "gauge", "1 if the daemon answered, 0 if not.");
        json_array_foreach(all, i, s)
        {
                printf("vbd_up{domid=\"%lld\",devid=\"%lld\"} %d\n", LABELS(s),
                       json_object_get(s, "ops") ? 1 : 0);
        }
        prom_header("vbd_paused", "gauge", "1 if the VBD is paused.");
        json_array_foreach(all, i, s)
        {
                if (json_object_get(s, "ops"))
                        printf("vbd_paused{domid=\"%lld\",devid=\"%lld\"} %d\n", LABELS(s),
                               strncmp(vbdctl_jstr(s, "state"), "paus", 4) == 0);
        }
        for (size_t g = 0; g < VBD_ARRAY_SIZE(globals); g++) {
                prom_header(globals[g].metric, globals[g].type, globals[g].help);
                json_array_foreach(all, i, s)
                {
                        if (json_object_get(s, "ops"))
                                printf("%s{domid=\"%lld\",devid=\"%lld\"} %lld\n",
                                       globals[g].metric, LABELS(s),
                                       vbdctl_jint(s, globals[g].key));
                }
        }
        for (size_t c = 0; c < VBD_ARRAY_SIZE(counters); c++) {
                prom_header(counters[c].metric, "counter", counters[c].help);
                json_array_foreach(all, i, s)
                {
                        for (unsigned k = 0; k < VBD_ARRAY_SIZE(ops); k++) {
                                json_t *o = json_object_get(json_object_get(s, "ops"), ops[k]);

                                if (o)
                                        printf("%s{domid=\"%lld\",devid=\"%lld\",op=\"%s\"} "
                                               "%lld\n",
                                               counters[c].metric, LABELS(s), ops[k],
                                               vbdctl_jint(o, counters[c].key));
                        }
                }
        }
        prom_header("vbd_request_latency_seconds", "histogram",
                    "Request latency, by operation (log2 buckets).");
        json_array_foreach(all, i, s)
        {
                for (unsigned k = 0; k < VBD_ARRAY_SIZE(ops); k++) {
                        json_t *o = json_object_get(json_object_get(s, "ops"), ops[k]);
                        json_t *hist = json_object_get(o, "lat_hist_log2_us");
                        unsigned long long cum = 0;
                        size_t b;
                        json_t *v;

                        if (!o)
                                continue;
                        json_array_foreach(hist, b, v)
                        {
                                cum += (unsigned long long)json_integer_value(v);
                                /* bucket b: below 2^(b+1) us */
                                printf("vbd_request_latency_seconds_bucket{domid=\"%lld\","
                                       "devid=\"%lld\",op=\"%s\",le=\"%g\"} %llu\n",
                                       LABELS(s), ops[k], (double)(2ull << b) / 1e6, cum);
                        }
                        printf("vbd_request_latency_seconds_bucket{domid=\"%lld\",devid=\"%lld\","
                               "op=\"%s\",le=\"+Inf\"} %lld\n",
                               LABELS(s), ops[k], vbdctl_jint(o, "requests"));
                        printf("vbd_request_latency_seconds_sum{domid=\"%lld\",devid=\"%lld\","
                               "op=\"%s\"} %g\n",
                               LABELS(s), ops[k], (double)vbdctl_jint(o, "lat_sum_us") / 1e6);
                        printf("vbd_request_latency_seconds_count{domid=\"%lld\",devid=\"%lld\","
                               "op=\"%s\"} %lld\n",
                               LABELS(s), ops[k], vbdctl_jint(o, "requests"));
                }
        }
#undef LABELS
}

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        *(bool *)data = true;
        return 0;
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {{"prometheus", no_argument, NULL, 'P'}, {}};
        bool prom = false, one;
        struct vbdctl_entry *e = NULL;
        size_t n = 0;
        json_t *all, *res;
        int r, ret = 0;

        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &prom)))
                return r;
        if (o->have_domid != o->have_devid)
                return vbdctl_usage_error(o, "give both --domid and --devid, or neither (all)");
        one = o->have_domid;
        if (prom && o->json)
                return vbdctl_usage_error(o, "--prometheus or --json, not both");
        if (one) {
                r = vbdctl_call_vbd(o, "stats", NULL, vbdctl_timeout(o, 10000), &res);
                if (r)
                        return r;
                if (o->json) {
                        vbdctl_print_json(res);
                        return 0;
                }
                all = json_array();
                json_array_append_new(all, res);
        } else {
                r = vbdctl_scan(o->dir, &e, &n);
                if (r < 0)
                        return vbdctl_fail(o, r, false, "%s: %s", o->dir, strerror(-r));
                all = json_array();
                for (size_t i = 0; i < n; i++) {
                        struct vbd_err err = {0};

                        r = vbdctl_call(e[i].path, "stats", NULL, vbdctl_timeout(o, 3000), &res,
                                        &err);
                        if (r != 0) {
                                /* Reported (and exported as vbd_up 0), not fatal. */
                                if (!prom)
                                        fprintf(stderr, "vbd-ctl stats: %s: %s\n",
                                                vbdctl_name(e[i].domid, e[i].devid), err.msg);
                                if (r != -ECONNREFUSED && r != -ENOENT)
                                        ret = VBDCTL_EXIT_FAILED;
                                res = json_pack("{s:I,s:I,s:s}", "domid", (json_int_t)e[i].domid,
                                                "devid", (json_int_t)e[i].devid, "error", err.msg);
                        }
                        json_array_append_new(all, res);
                }
                free(e);
        }
        if (prom)
                print_prometheus(all);
        else if (o->json)
                vbdctl_print_json(json_incref(all));
        else {
                size_t i;
                json_t *s;

                json_array_foreach(all, i, s)
                {
                        if (json_object_get(s, "ops"))
                                print_human(s);
                }
        }
        json_decref(all);
        fflush(stdout);
        return ret;
}

const struct vbdctl_verb vbdctl_verb_stats = {
    .name = "stats",
    .run = run,
    .args = "[-d D -n N] [--json | --prometheus]",
    .summary = "I/O statistics and latency percentiles (all daemons without -d/-n)",
};
