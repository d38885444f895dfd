/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl migrate: move a running guest's disk to an NBD server (the
 * partner) with the daemon's mirror (PASM, or precopy for comparison).
 *
 *   start    stack the mirror and start copying (cmd-migrate-start.c)
 *   status   the daemon's status object, once or followed (cmd-migrate-status.c)
 *   cutover  pause the VBD, flush both sides: the partner has the disk
 *            (cmd-migrate-cutover.c)
 *   abort    drop the partner; the source is untouched (cmd-migrate-abort.c)
 *
 * This file: the sub-verb dispatch, the options all of them parse, the calls
 * to the daemon and the numbers for people they print.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd-migrate.h"
#include "util/parse.h"
#include "vbd/macro.h"

/* ---- numbers for people ---- */

double mig_jnum(json_t *obj, const char *key)
{
        return json_number_value(json_object_get(obj, key));
}

static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};

static unsigned unit_of(double v)
{
        unsigned u = 0;

        while (v >= 1024 && u + 1 < VBD_ARRAY_SIZE(units)) {
                v /= 1024;
                u++;
        }
        return u;
}

static double scaled(double v, unsigned u)
{
        while (u--)
                v /= 1024;
        return v;
}

/* "56.0 MiB", "120 MiB" */
const char *mig_fmt_bytes(char *buf, size_t size, double v)
{
        unsigned u = unit_of(v);
        double x = scaled(v, u);

        /* whole numbers without ".0": "1 MiB" regions */
        snprintf(buf, size, u == 0 || x >= 100 || x == (double)(long long)x ? "%.0f %s" : "%.1f %s",
                 x, units[u]);
        return buf;
}

/* "0.9/2.0 GiB": both in the unit of the total. */
const char *mig_fmt_pair(char *buf, size_t size, double part, double total)
{
        unsigned u = unit_of(total);
        double t = scaled(total, u);

        snprintf(buf, size, u == 0 || t >= 100 ? "%.0f/%.0f %s" : "%.1f/%.1f %s", scaled(part, u),
                 t, units[u]);
        return buf;
}

/* "0:09", "1:02:03"; "?" when unknown (< 0). */
const char *mig_fmt_dur(char *buf, size_t size, double s)
{
        long long t;

        if (!(s >= 0) || s > 1e9) {
                snprintf(buf, size, "?");
                return buf;
        }
        t = (long long)(s + 0.5);
        if (t >= 3600)
                snprintf(buf, size, "%lld:%02lld:%02lld", t / 3600, t / 60 % 60, t % 60);
        else
                snprintf(buf, size, "%lld:%02lld", t / 60, t % 60);
        return buf;
}

double mig_progress(json_t *st)
{
        json_t *p = json_object_get(st, "progress");
        double size = mig_jnum(st, "size"), v;

        if (json_is_number(p))
                v = json_number_value(p);
        else
                v = size > 0 ? mig_jnum(st, "bytes_synced") / size : 0;
        return v < 0 ? 0 : v > 1 ? 1 : v;
}

bool mig_is_precopy(json_t *st)
{
        return strcmp(vbdctl_jstr(st, "mode"), "precopy") == 0;
}

void mig_print_line_json(json_t *j)
{
        json_dumpf(j, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        fflush(stdout);
}

/* ---- calls ---- */

/*
 * For people's terminals: control characters in the reply's strings (an
 * error may quote the partner) become '?'.  JSON output keeps them escaped.
 */
static bool is_control(char c)
{
        return (unsigned char)c < 0x20 || c == 0x7f;
}

static void sanitize(json_t *st)
{
        const char *key;
        json_t *v;

        json_object_foreach(st, key, v)
        {
                const char *str = json_string_value(v);
                size_t n = json_string_length(v), i = 0;
                char *copy;

                while (str && i < n && !is_control(str[i]))
                        i++;
                if (!str || i == n || !(copy = malloc(n + 1)))
                        continue;
                for (i = 0; i < n; i++)
                        copy[i] = is_control(str[i]) ? '?' : str[i];
                json_string_setn(v, copy, n);
                free(copy);
        }
}

/*
 * vbdctl_call_vbd(), but while streaming JSON lines an error is one compact
 * line too ({"ok":false,"error":{...}}), so that every line parses.
 */
int mig_call(struct mig *m, const char *cmd, json_t *args, int timeout_ms, json_t **ret)
{
        struct vbdctl *o = m->o;
        struct vbd_err err = {0};
        const char *name;
        char path[256];
        json_t *j;
        int r, e, ex;

        if (vbdctl_socket_path(o->dir, o->domid, o->devid, path, sizeof(path)) < 0) {
                json_decref(args);
                err.code = -ENAMETOOLONG;
                snprintf(err.msg, sizeof(err.msg), "--ctl-dir is too long");
                r = -ENAMETOOLONG;
        } else {
                r = vbdctl_call(path, cmd, args, timeout_ms, ret, &err);
                if (r == 0) {
                        if (!o->json)
                                sanitize(*ret);
                        return 0;
                }
        }
        for (char *c = err.msg; *c; c++)
                *c = is_control(*c) ? '?' : *c;
        mig_bar_end(m);
        if (!m->stream)
                return vbdctl_fail(o, err.code, r == 1, "%s: %s", vbdctl_name(o->domid, o->devid),
                                   err.msg);
        /* vbdctl_fail()'s object, on one line */
        e = err.code < 0 ? -err.code : err.code;
        if (r == 1)
                ex = e == EPERM || e == EACCES ? VBDCTL_EXIT_PERM : VBDCTL_EXIT_FAILED;
        else
                ex = vbdctl_exit_code(err.code);
        fprintf(stderr, "vbd-ctl %s: %s: %s\n", o->verb, vbdctl_name(o->domid, o->devid), err.msg);
        name = e ? strerrorname_np(e) : NULL;
        j = json_pack("{s:b,s:{s:i,s:s,s:s,s:i}}", "ok", 0, "error", "errno", e, "code",
                      name ? name : "EIO", "message", err.msg, "exit", ex);
        mig_print_line_json(j);
        json_decref(j);
        return ex;
}

int mig_check_state(struct mig *m, json_t *st)
{
        if (json_is_string(json_object_get(st, "state")))
                return 0;
        mig_bar_end(m);
        fprintf(stderr, "vbd-ctl %s: %s: the reply has no migration state\n", m->o->verb,
                vbdctl_name(m->o->domid, m->o->devid));
        return VBDCTL_EXIT_PROTO;
}

/* ---- options ---- */

/* Percent-encode a path for the query of an nbd+unix URI. */
static int pct_encode(char *out, size_t size, const char *s)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t n = 0;

        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                             (c >= '0' && c <= '9') || strchr("-._~/", c);

                if (n + (plain ? 1 : 3) >= size)
                        return -ENAMETOOLONG;
                if (plain) {
                        out[n++] = (char)c;
                } else {
                        out[n++] = '%';
                        out[n++] = hex[c >> 4];
                        out[n++] = hex[c & 15];
                }
        }
        out[n] = '\0';
        return 0;
}

/*
 * --to: an NBD URI as is (nbd://, nbd+unix://, nbds://, nbds+unix://), or
 * vbdd's --nbd endpoint forms: unix:PATH (relative to this directory) and
 * tcp:HOST:PORT.
 */
static int parse_to(struct mig *m, const char *arg)
{
        struct vbdctl *o = m->o;
        size_t len = strlen(arg);

        if (len == 0 || len >= MIG_TO_MAX)
                return vbdctl_usage_error(o, "--to: give an NBD URI of at most %d bytes",
                                          MIG_TO_MAX - 1);
        m->spec[0] = '\0';
        if (mig_is_spec(arg)) { /* served by a bridge (migrate-bridge.c) */
                if (strchr(arg, '\n'))
                        return vbdctl_usage_error(o, "--to: a newline in the spec");
                snprintf(m->spec, sizeof(m->spec), "%s", arg);
                m->to[0] = '\0';
                return 0;
        }
        if (strncmp(arg, "nbd://", 6) == 0 || strncmp(arg, "nbd+unix://", 11) == 0 ||
            strncmp(arg, "nbds://", 7) == 0 || strncmp(arg, "nbds+unix://", 12) == 0) {
                snprintf(m->to, sizeof(m->to), "%s", arg);
                return 0;
        }
        if (strncmp(arg, "unix:", 5) == 0 && arg[5]) {
                char path[MIG_TO_MAX], enc[MIG_TO_MAX];
                const char *p = arg + 5;

                if (p[0] != '/') {
                        char cwd[MIG_TO_MAX];

                        if (!getcwd(cwd, sizeof(cwd)) ||
                            snprintf(path, sizeof(path), "%s/%s", cwd, p) >= (int)sizeof(path))
                                return vbdctl_usage_error(o, "--to '%s': path too long", arg);
                        p = path;
                }
                if (pct_encode(enc, sizeof(enc), p) < 0 ||
                    snprintf(m->to, sizeof(m->to), "nbd+unix:///?socket=%s", enc) >=
                        (int)sizeof(m->to))
                        return vbdctl_usage_error(o, "--to '%s': path too long", arg);
                return 0;
        }
        if (strncmp(arg, "tcp:", 4) == 0) {
                const char *host = arg + 4, *colon = strrchr(host, ':');
                uint32_t port;

                if (!colon || colon == host || vbd_parse_u32(colon + 1, 65535, &port) < 0 ||
                    port == 0 || (host[0] == '[' && colon[-1] != ']'))
                        return vbdctl_usage_error(o, "--to '%s': give tcp:HOST:PORT", arg);
                snprintf(m->to, sizeof(m->to), "nbd://%.*s:%u", (int)(colon - host), host,
                         (unsigned)port);
                return 0;
        }
        return vbdctl_usage_error(o,
                                  "--to '%s' is not an NBD URI (nbd://HOST[:PORT][/NAME], "
                                  "nbd+unix:///NAME?socket=PATH, unix:PATH or tcp:HOST:PORT) "
                                  "nor an image spec (raw:FILE, qcow2:FILE, rbd:POOL/IMAGE)",
                                  arg);
}

/* Seconds with an optional fraction, 0.1..3600. */
static int parse_interval(struct mig *m, const char *arg)
{
        char *end;
        double v;

        errno = 0;
        v = strtod(arg, &end);
        if (errno || end == arg || *end || !(v >= 0.1 && v <= 3600) || arg[0] == ' ')
                return vbdctl_usage_error(m->o, "--interval '%s': give seconds, 0.1..3600", arg);
        m->interval_ms = (int)(v * 1000 + 0.5);
        m->have_interval = true;
        return 0;
}

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct mig *m = data;
        char buf[64];
        size_t n;

        switch (c) {
        case MIG_OPT_TO:
                return parse_to(m, arg);
        case MIG_OPT_MODE:
                if (strcmp(arg, "pasm") && strcmp(arg, "precopy"))
                        return vbdctl_usage_error(o, "--mode '%s': pasm or precopy", arg);
                m->mode = arg;
                return 0;
        case MIG_OPT_SHARE:
                n = strlen(arg);
                snprintf(buf, sizeof(buf), "%.*s", n && arg[n - 1] == '%' ? (int)n - 1 : (int)n,
                         arg);
                if (vbd_parse_u32(buf, 100, &m->share) < 0 || m->share == 0)
                        return vbdctl_usage_error(o, "--share '%s': a percentage, 1..100", arg);
                m->have_share = true;
                return 0;
        case MIG_OPT_RATE:
                n = strlen(arg);
                snprintf(buf, sizeof(buf), "%.*s",
                         n >= 2 && strcmp(arg + n - 2, "/s") == 0 ? (int)n - 2 : (int)n, arg);
                if (vbd_parse_size(buf, &m->rate) < 0 || m->rate > (UINT64_MAX >> 2))
                        return vbdctl_usage_error(
                            o, "--rate '%s': bytes per second, e.g. 50M or 1G/s (0: no cap)", arg);
                m->have_rate = true;
                return 0;
        case MIG_OPT_REGION:
                if (vbd_parse_size(arg, &m->region) < 0 || m->region < (64u << 10) ||
                    m->region > (64u << 20) || (m->region & (m->region - 1)))
                        return vbdctl_usage_error(o, "--region '%s': a power of two, 64K..64M",
                                                  arg);
                m->have_region = true;
                return 0;
        case MIG_OPT_ZEROED:
                m->zeroed = true;
                return 0;
        case MIG_OPT_DEPTH:
                if (vbd_parse_u32(arg, 64, &m->depth) < 0 || m->depth == 0)
                        return vbdctl_usage_error(o, "--depth '%s': 1..64 regions", arg);
                m->have_depth = true;
                return 0;
        case MIG_OPT_CONNECTIONS:
                if (vbd_parse_u32(arg, 8, &m->connections) < 0 || m->connections == 0)
                        return vbdctl_usage_error(o, "--connections '%s': 1..8", arg);
                m->have_connections = true;
                return 0;
        case MIG_OPT_WAIT:
        case MIG_OPT_WATCH:
        case MIG_OPT_WAIT_READY:
                m->follow = true;
                return 0;
        case MIG_OPT_INTERVAL:
                return parse_interval(m, arg);
        case MIG_OPT_SHALLOW:
                m->shallow = true;
                if (arg && strncmp(arg, "sha256:", 7) != 0)
                        return vbdctl_usage_error(
                            o, "--shallow=FP: FP is what 'vbd-ctl layer sum' prints (sha256:...)");
                m->shallow_fp = arg;
                return 0;
        case MIG_OPT_SWITCH:
                m->switch_bridge = true;
                return 0;
        case MIG_OPT_SWITCH_TO:
                if (!*arg || strlen(arg) >= MIG_TO_MAX)
                        return vbdctl_usage_error(o, "--switch-to: give an image spec");
                m->switch_to = arg;
                return 0;
        }
        return VBDCTL_EXIT_USAGE;
}

int mig_parse(struct mig *m, const struct mig_sub *s, int argc, char **argv,
              const struct option *extra)
{
        int r = vbdctl_parse(m->o, argc, argv, extra, opt, m);

        if (r == -1) /* --help: vbdctl_parse knows no "migrate start" */
                fputs(s->help, stdout);
        if (r)
                return r;
        if ((r = vbdctl_need_vbd(m->o)))
                return r;
        m->stream = m->follow && m->o->json;
        m->tty = isatty(STDOUT_FILENO);
        return 0;
}

static const struct mig_sub *const subs[] = {&mig_sub_start, &mig_sub_status, &mig_sub_cutover,
                                             &mig_sub_abort};

static void print_help(FILE *f)
{
        fprintf(f, "Usage: vbd-ctl migrate start|status|cutover|abort -d D -n N [OPTIONS]\n"
                   "Move a running guest's disk to an NBD server (the partner), or into an\n"
                   "image (raw:, qcow2:, rbd:), with the daemon's mirror.\n"
                   "\n"
                   "  start    start copying (--to URI, or --to SPEC through a bridge);\n"
                   "           --wait follows it until ready\n"
                   "  status   state, progress, rate, ETA; --watch follows it\n"
                   "  cutover  pause the VBD and flush both sides: the partner has the disk\n"
                   "  abort    drop the partner; the guest goes on with the local image\n"
                   "\n"
                   "Exit codes: 0 the awaited state (ready, cutover) or the answer; 1 the\n"
                   "migration failed or was aborted, or the daemon refused; 2 usage; 3..6 as\n"
                   "for every verb.  'vbd-ctl migrate SUB --help' shows a sub-command's\n"
                   "options; see vbd-ctl(8).\n");
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        struct mig m = {.o = o, .interval_ms = 1000};
        const char *name = argc > 1 ? argv[1] : NULL;

        if (!name)
                return vbdctl_usage_error(o, "give start, status, cutover or abort");
        if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
                print_help(stdout);
                return -1;
        }
        for (size_t i = 0; i < VBD_ARRAY_SIZE(subs); i++) {
                if (strcmp(name, subs[i]->name))
                        continue;
                o->verb = subs[i]->verb;
                argv[1] = argv[0]; /* getopt's messages name the program */
                return subs[i]->run(&m, argc - 1, argv + 1);
        }
        return vbdctl_usage_error(o, "'%s': give start, status, cutover or abort", name);
}

const struct vbdctl_verb vbdctl_verb_migrate = {
    .name = "migrate",
    .run = run,
    .args = "start|status|cutover|abort -d D -n N [OPTIONS] (see vbd-ctl migrate --help)",
    .summary = "copy the disk to an NBD server or an image while the guest runs, then cut over",
};
