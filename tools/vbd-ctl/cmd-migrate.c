/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl migrate: move a running guest's disk to an NBD server (the
 * partner) with the daemon's mirror (PASM, or precopy for comparison).
 *
 *   start    stack the mirror and start copying (migrate-start)
 *   status   the daemon's status object, once or followed (migrate-status)
 *   cutover  pause the VBD, flush both sides: the partner has the disk
 *   abort    drop the partner; the source is untouched
 *
 * Following (status --watch, start --wait, cutover --wait-ready) polls
 * migrate-status: a progress bar redrawn on a tty, one plain line per poll
 * otherwise, one compact JSON object per line with --json.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "util/parse.h"
#include "vbd-ctl.h"

#define TO_MAX        4096
#define START_WAIT_MS 60000 /* pause (drain) + stack + resume */
#define POLL_WAIT_MS  10000

enum {
        OPT_TO = 0x2000,
        OPT_MODE,
        OPT_SHARE,
        OPT_RATE,
        OPT_REGION,
        OPT_ZEROED,
        OPT_DEPTH,
        OPT_WAIT,
        OPT_WATCH,
        OPT_INTERVAL,
        OPT_WAIT_READY,
};

struct mig {
        struct vbdctl *o;
        /* start */
        char to[TO_MAX];
        const char *mode;
        bool have_share, have_rate, have_region, have_depth, zeroed;
        uint32_t share, depth;
        uint64_t rate, region;
        /* following */
        bool follow;    /* --wait, --watch, --wait-ready */
        bool stream;    /* --json while following: compact lines */
        bool tty;       /* stdout is a terminal: redraw a bar */
        bool bar_shown; /* a bar is on screen without its newline */
        bool have_interval;
        unsigned bar_shape; /* see progress_bar_line() */
        int interval_ms;    /* between polls */
};

/* ---- numbers for people ---- */

static double jnum(json_t *obj, const char *key)
{
        return json_number_value(json_object_get(obj, key));
}

static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};

static unsigned unit_of(double v)
{
        unsigned u = 0;

        while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
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
static const char *fmt_bytes(char *buf, size_t size, double v)
{
        unsigned u = unit_of(v);
        double x = scaled(v, u);

        /* whole numbers without ".0": "1 MiB" regions */
        snprintf(buf, size, u == 0 || x >= 100 || x == (double)(long long)x ? "%.0f %s" : "%.1f %s",
                 x, units[u]);
        return buf;
}

/* "0.9/2.0 GiB": both in the unit of the total. */
static const char *fmt_pair(char *buf, size_t size, double part, double total)
{
        unsigned u = unit_of(total);
        double t = scaled(total, u);

        snprintf(buf, size, u == 0 || t >= 100 ? "%.0f/%.0f %s" : "%.1f/%.1f %s", scaled(part, u),
                 t, units[u]);
        return buf;
}

/* "0:09", "1:02:03"; "?" when unknown (< 0). */
static const char *fmt_dur(char *buf, size_t size, double s)
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

static double progress(json_t *st)
{
        json_t *p = json_object_get(st, "progress");
        double size = jnum(st, "size"), v;

        if (json_is_number(p))
                v = json_number_value(p);
        else
                v = size > 0 ? jnum(st, "bytes_synced") / size : 0;
        return v < 0 ? 0 : v > 1 ? 1 : v;
}

static bool is_precopy(json_t *st)
{
        return strcmp(vbdctl_jstr(st, "mode"), "precopy") == 0;
}

/* ---- output ---- */

/*
 * One line of progress, fields apart by sep:
 * 45%  0.9/2.0 GiB  120 MiB/s  ETA 0:09  fwd 1234 writes/56 MiB  copying
 */
static void progress_text(char *buf, size_t size, json_t *st, const char *sep, bool state_first,
                          bool pad)
{
        const char *state = vbdctl_jstr(st, "state");
        char pair[64], rate[32], eta[32], extra[96], b1[32];

        fmt_pair(pair, sizeof(pair), jnum(st, "bytes_synced"), jnum(st, "size"));
        fmt_bytes(rate, sizeof(rate), jnum(st, "rate"));
        if (strcmp(state, "ready") == 0 || strcmp(state, "cutover") == 0)
                snprintf(eta, sizeof(eta), "0:00");
        else
                fmt_dur(eta, sizeof(eta), jnum(st, "eta_s"));
        if (is_precopy(st))
                snprintf(extra, sizeof(extra), "pass %lld dirty %s", vbdctl_jint(st, "passes"),
                         fmt_bytes(b1, sizeof(b1), jnum(st, "dirty_bytes")));
        else
                snprintf(extra, sizeof(extra), "fwd %lld writes/%s",
                         vbdctl_jint(st, "writes_forwarded"),
                         fmt_bytes(b1, sizeof(b1), jnum(st, "bytes_forwarded")));
        /* 100% only when all is synced */
        snprintf(buf, size, "%s%s%*d%%%s%s%s%s/s%sETA %s%s%s%s%s", state_first ? state : "",
                 state_first ? sep : "", pad ? 3 : 1, (int)(progress(st) * 100), sep, pair, sep,
                 rate, sep, eta, sep, extra, state_first ? "" : sep, state_first ? "" : state);
}

/*
 * The line redrawn on a terminal of cols columns: a bar of 20 and the fields
 * two spaces apart, or narrower shapes as the line grows or the terminal is
 * narrow (*shape only grows: a steady bar); in the last, no bar, the state
 * first, cut at the edge (a line that wraps cannot be redrawn with \r).
 */
static void progress_bar_line(char *buf, size_t size, json_t *st, unsigned cols, unsigned *shape)
{
        static const struct {
                unsigned bar;
                const char *sep;
        } shapes[] = {{20, "  "}, {10, "  "}, {10, " "}, {5, " "}};
        const size_t n = sizeof(shapes) / sizeof(shapes[0]);
        char text[256];

        for (; *shape < n; (*shape)++) {
                const char *sep = shapes[*shape].sep;
                unsigned w = shapes[*shape].bar, fill = (unsigned)(progress(st) * w);
                size_t len = 0;

                progress_text(text, sizeof(text), st, sep, false, false);
                if (strlen(text) + strlen(sep) + 2 + w >= cols)
                        continue;
                buf[len++] = '[';
                for (unsigned k = 0; k < w; k++)
                        buf[len++] = k < fill ? '#' : '.';
                snprintf(buf + len, size - len, "]%s%s", sep, text);
                return;
        }
        progress_text(buf, size, st, " ", true, false);
        if (strlen(buf) >= cols)
                buf[cols - 1] = '\0';
}

static unsigned tty_columns(void)
{
        struct winsize ws;

        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1)
                return ws.ws_col;
        return 80;
}

/* End a bar left on screen, before anything else is printed. */
static void bar_end(struct mig *m)
{
        if (m->bar_shown) {
                fputc('\n', stdout);
                fflush(stdout);
                m->bar_shown = false;
        }
}

static void print_line_json(json_t *j)
{
        json_dumpf(j, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        fflush(stdout);
}

/* One poll's worth of output while following. */
static void show_progress(struct mig *m, json_t *st)
{
        char line[512];

        if (m->stream) {
                print_line_json(st);
                return;
        }
        if (m->tty) {
                progress_bar_line(line, sizeof(line), st, tty_columns(), &m->bar_shape);
                printf("\r%s\033[K", line);
                m->bar_shown = true;
        } else {
                progress_text(line, sizeof(line), st, "  ", false, true);
                printf("%s\n", line);
        }
        fflush(stdout);
}

/* The one-screen summary of `status`. */
static void print_summary(struct vbdctl *o, json_t *st)
{
        const char *state = vbdctl_jstr(st, "state");
        double size = jnum(st, "size"), sent = jnum(st, "bytes_sent");
        char a[32], b[32], c[32], d[32], e[32];

        if (strcmp(state, "none") == 0) {
                printf("%s: no migration\n", vbdctl_name(o->domid, o->devid));
                return;
        }
        printf("%s: migration %s (%s) to %s\n", vbdctl_name(o->domid, o->devid), state,
               vbdctl_jstr(st, "mode"), vbdctl_jstr(st, "to"));
        printf("  progress   %.1f%%  %s of %s synced (%lld/%lld regions of %s, %lld in flight)\n",
               (int)(progress(st) * 1000) / 10.0, fmt_bytes(a, sizeof(a), jnum(st, "bytes_synced")),
               fmt_bytes(b, sizeof(b), size), vbdctl_jint(st, "regions_synced"),
               vbdctl_jint(st, "regions_total"), fmt_bytes(c, sizeof(c), jnum(st, "region_size")),
               vbdctl_jint(st, "regions_inflight"));
        printf("  rate       %s/s  ETA %s  elapsed %s\n", fmt_bytes(a, sizeof(a), jnum(st, "rate")),
               strcmp(state, "ready") == 0 || strcmp(state, "cutover") == 0
                   ? "0:00"
                   : fmt_dur(b, sizeof(b), jnum(st, "eta_s")),
               fmt_dur(c, sizeof(c), jnum(st, "elapsed_ms") / 1000));
        printf("  forwarded  %lld writes, %s  (%lld guest writes waited)\n",
               vbdctl_jint(st, "writes_forwarded"),
               fmt_bytes(a, sizeof(a), jnum(st, "bytes_forwarded")),
               vbdctl_jint(st, "writes_waited"));
        if (size > 0)
                snprintf(e, sizeof(e), "%.2fx the disk", sent / size);
        else
                snprintf(e, sizeof(e), "-");
        printf("  sent       %s = %s  (copied %s, forwarded %s; zeroes %s)\n",
               fmt_bytes(a, sizeof(a), sent), e, fmt_bytes(b, sizeof(b), jnum(st, "bytes_copied")),
               fmt_bytes(c, sizeof(c), jnum(st, "bytes_forwarded")),
               fmt_bytes(d, sizeof(d), jnum(st, "bytes_zeroed")));
        printf("  partner    size %s, %lld requests in flight\n",
               fmt_bytes(a, sizeof(a), jnum(st, "partner_size")),
               vbdctl_jint(st, "partner_inflight"));
        if (is_precopy(st))
                printf("  precopy    %lld passes, %s dirty after the first\n",
                       vbdctl_jint(st, "passes"), fmt_bytes(a, sizeof(a), jnum(st, "dirty_bytes")));
        if (strcmp(state, "cutover") == 0)
                printf("  downtime   %lld ms\n", vbdctl_jint(st, "downtime_ms"));
        if (strcmp(state, "failed") == 0)
                printf("  error      %s\n", vbdctl_jstr(st, "error"));
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
static int call(struct mig *m, const char *cmd, json_t *args, int timeout_ms, json_t **ret)
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
        bar_end(m);
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
        print_line_json(j);
        json_decref(j);
        return ex;
}

/* A reply must carry a state; 0 or the exit code (reported). */
static int check_state(struct mig *m, json_t *st)
{
        if (json_is_string(json_object_get(st, "state")))
                return 0;
        bar_end(m);
        fprintf(stderr, "vbd-ctl %s: %s: the reply has no migration state\n", m->o->verb,
                vbdctl_name(m->o->domid, m->o->devid));
        return VBDCTL_EXIT_PROTO;
}

/* ---- following ---- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
        interrupted = sig;
}

enum outcome { GOING, REACHED, LOST };

/* Where a followed migration stands: going on, there (ready/cutover), or lost. */
static enum outcome outcome(const char *state)
{
        if (strcmp(state, "ready") == 0 || strcmp(state, "cutover") == 0)
                return REACHED;
        if (strcmp(state, "failed") == 0 || strcmp(state, "aborted") == 0 ||
            strcmp(state, "none") == 0)
                return LOST;
        return GOING; /* connecting, copying, or a state this vbd-ctl does not know */
}

/* The end of a migration that did not reach its goal: stderr, exit 1. */
static int report_lost(struct mig *m, json_t *st)
{
        struct vbdctl *o = m->o;
        const char *state = vbdctl_jstr(st, "state"), *name = vbdctl_name(o->domid, o->devid);

        bar_end(m);
        if (strcmp(state, "failed") == 0)
                fprintf(stderr, "vbd-ctl %s: %s: migration failed: %s\n", o->verb, name,
                        vbdctl_jstr(st, "error"));
        else if (strcmp(state, "aborted") == 0)
                fprintf(stderr, "vbd-ctl %s: %s: migration aborted\n", o->verb, name);
        else
                fprintf(stderr, "vbd-ctl %s: %s: no migration\n", o->verb, name);
        return VBDCTL_EXIT_FAILED;
}

/* Catch sig unless it is ignored (as in a non-interactive shell's & jobs). */
static void catch (int sig, struct sigaction *old)
{
        struct sigaction sa = {.sa_handler = on_signal};

        sigaction(sig, NULL, old);
        if (old->sa_handler != SIG_IGN)
                sigaction(sig, &sa, NULL);
}

/*
 * Show st, then poll until the state is ready or cutover (0, *ret_last holds
 * the last status), or failed, aborted, none (1), or a call fails (its exit
 * code).  st is consumed.  SIGINT/SIGTERM end vbd-ctl by that signal, after
 * the bar's newline; the migration goes on.
 */
static int follow(struct mig *m, json_t *st, json_t **ret_last)
{
        struct sigaction old_int, old_term;
        int r = 0, sig = 0;

        *ret_last = NULL;
        interrupted = 0;
        catch (SIGINT, &old_int);
        catch (SIGTERM, &old_term);
        for (;;) {
                enum outcome oc;

                if ((r = check_state(m, st)))
                        break;
                show_progress(m, st);
                oc = outcome(vbdctl_jstr(st, "state"));
                if (oc == REACHED) {
                        *ret_last = st;
                        st = NULL;
                        break;
                }
                if (oc == LOST) {
                        r = report_lost(m, st);
                        break;
                }
                json_decref(st);
                st = NULL;
                poll(NULL, 0, m->interval_ms); /* EINTR on a signal */
                if ((sig = interrupted))
                        break;
                if ((r = call(m, "migrate-status", NULL, vbdctl_timeout(m->o, POLL_WAIT_MS), &st)))
                        break;
                if ((sig = interrupted))
                        break;
        }
        json_decref(st);
        bar_end(m);
        if (sig) {
                if (!m->stream)
                        fprintf(stderr,
                                "vbd-ctl %s: interrupted; the migration goes on "
                                "(vbd-ctl migrate status/abort)\n",
                                m->o->verb);
                signal(sig, SIG_DFL);
                raise(sig);
                return VBDCTL_EXIT_FAILED; /* not reached */
        }
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        return r;
}

/* After a followed migration reached ready or cutover: one human line. */
static void print_reached(struct mig *m, json_t *st)
{
        struct vbdctl *o = m->o;
        const char *name = vbdctl_name(o->domid, o->devid);
        double size = jnum(st, "size");
        char a[32], b[32];

        if (m->stream || o->json)
                return;
        if (strcmp(vbdctl_jstr(st, "state"), "cutover") == 0) {
                printf("%s: cut over to %s (downtime %lld ms); the VBD stays paused\n", name,
                       vbdctl_jstr(st, "to"), vbdctl_jint(st, "downtime_ms"));
                return;
        }
        printf("%s: ready: %s synced in %s, %.2fx the disk sent; %s\n", name,
               fmt_bytes(a, sizeof(a), size), fmt_dur(b, sizeof(b), jnum(st, "elapsed_ms") / 1000),
               size > 0 ? jnum(st, "bytes_sent") / size : 0.0,
               is_precopy(st) ? "cutover copies what is dirty"
                              : "guest writes are forwarded until cutover");
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

        if (len == 0 || len >= TO_MAX)
                return vbdctl_usage_error(o, "--to: give an NBD URI of at most %d bytes",
                                          TO_MAX - 1);
        if (strncmp(arg, "nbd://", 6) == 0 || strncmp(arg, "nbd+unix://", 11) == 0 ||
            strncmp(arg, "nbds://", 7) == 0 || strncmp(arg, "nbds+unix://", 12) == 0) {
                snprintf(m->to, sizeof(m->to), "%s", arg);
                return 0;
        }
        if (strncmp(arg, "unix:", 5) == 0 && arg[5]) {
                char path[TO_MAX], enc[TO_MAX];
                const char *p = arg + 5;

                if (p[0] != '/') {
                        char cwd[TO_MAX];

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
                                  "nbd+unix:///NAME?socket=PATH, unix:PATH or tcp:HOST:PORT)",
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
        case OPT_TO:
                return parse_to(m, arg);
        case OPT_MODE:
                if (strcmp(arg, "pasm") && strcmp(arg, "precopy"))
                        return vbdctl_usage_error(o, "--mode '%s': pasm or precopy", arg);
                m->mode = arg;
                return 0;
        case OPT_SHARE:
                n = strlen(arg);
                snprintf(buf, sizeof(buf), "%.*s", n && arg[n - 1] == '%' ? (int)n - 1 : (int)n,
                         arg);
                if (vbd_parse_u32(buf, 100, &m->share) < 0 || m->share == 0)
                        return vbdctl_usage_error(o, "--share '%s': a percentage, 1..100", arg);
                m->have_share = true;
                return 0;
        case OPT_RATE:
                n = strlen(arg);
                snprintf(buf, sizeof(buf), "%.*s",
                         n >= 2 && strcmp(arg + n - 2, "/s") == 0 ? (int)n - 2 : (int)n, arg);
                if (vbd_parse_size(buf, &m->rate) < 0 || m->rate > (UINT64_MAX >> 2))
                        return vbdctl_usage_error(
                            o, "--rate '%s': bytes per second, e.g. 50M or 1G/s (0: no cap)", arg);
                m->have_rate = true;
                return 0;
        case OPT_REGION:
                if (vbd_parse_size(arg, &m->region) < 0 || m->region < (64u << 10) ||
                    m->region > (64u << 20) || (m->region & (m->region - 1)))
                        return vbdctl_usage_error(o, "--region '%s': a power of two, 64K..64M",
                                                  arg);
                m->have_region = true;
                return 0;
        case OPT_ZEROED:
                m->zeroed = true;
                return 0;
        case OPT_DEPTH:
                if (vbd_parse_u32(arg, 64, &m->depth) < 0 || m->depth == 0)
                        return vbdctl_usage_error(o, "--depth '%s': 1..64 regions", arg);
                m->have_depth = true;
                return 0;
        case OPT_WAIT:
        case OPT_WATCH:
        case OPT_WAIT_READY:
                m->follow = true;
                return 0;
        case OPT_INTERVAL:
                return parse_interval(m, arg);
        }
        return VBDCTL_EXIT_USAGE;
}

/* ---- the sub-verbs ---- */

struct sub {
        const char *name, *verb; /* "start", "migrate start" */
        int (*run)(struct mig *m, int argc, char **argv);
        const char *help;
};

static int parse(struct mig *m, const struct sub *s, int argc, char **argv,
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

/* Follow the migration to the awaited state and say so (start --wait,
 * status --watch). */
static int follow_report(struct mig *m, json_t *st)
{
        json_t *last;
        int r = follow(m, st, &last);

        if (r)
                return r;
        print_reached(m, last);
        json_decref(last);
        return 0;
}

static int run_start(struct mig *m, int argc, char **argv);
static int run_status(struct mig *m, int argc, char **argv);
static int run_cutover(struct mig *m, int argc, char **argv);
static int run_abort(struct mig *m, int argc, char **argv);

static const struct sub subs[] = {
    {"start", "migrate start", run_start,
     "Usage: vbd-ctl migrate start -d D -n N --to URI [--mode pasm|precopy]\n"
     "         [--share PCT] [--rate BYTES/S] [--region SIZE] [--timeout S] [--zeroed]\n"
     "         [--depth N] [--wait [--interval S]] [--json]\n"
     "Start copying the VBD's disk to an NBD server while the guest runs.  The\n"
     "daemon pauses the VBD, stacks its mirror over the image and resumes; it\n"
     "answers with the status object before the partner is connected.\n"
     "\n"
     "  --to URI       the partner, writable and at least as large as the disk:\n"
     "                 nbd://HOST[:PORT][/NAME], nbd+unix:///NAME?socket=PATH, or\n"
     "                 unix:PATH and tcp:HOST:PORT (vbdd --nbd's forms), turned into\n"
     "                 those URIs (a relative PATH is taken from this directory)\n"
     "  --mode M       pasm (default): guest writes to copied regions are forwarded\n"
     "                 to the partner; precopy: they are copied again, in passes, and\n"
     "                 what is left at cutover (the guest is paused meanwhile)\n"
     "  --share PCT    while the guest does I/O, copy at most PCT% of the time,\n"
     "                 1..100 (default 50)\n"
     "  --rate BYTES/S cap the copy at BYTES per second (K, M, G suffixes, '/s'\n"
     "                 optional: 50M, 1G/s); 0: no cap (default)\n"
     "  --region SIZE  the copy and tracking unit, a power of two, 64K..64M\n"
     "                 (default 1M)\n"
     "  --timeout S    a partner request pending S seconds fails the migration,\n"
     "                 1..3600 (default 30).  Not the reply wait, here: vbd-ctl\n"
     "                 waits up to 60 s for the daemon's answer, 10 s for each poll.\n"
     "  --zeroed       the partner reads zeros already: holes are not sent at all\n"
     "                 (otherwise they go as NBD WRITE_ZEROES)\n"
     "  --depth N      regions copied at once while the guest is idle, 1..64\n"
     "                 (default 4)\n"
     "  --wait         then show the progress until the state is ready (exit 0),\n"
     "                 failed or aborted (exit 1); Ctrl-C stops vbd-ctl, not the copy\n"
     "  --interval S   seconds between polls with --wait (default 1, from 0.1)\n"
     "  -j, --json     print the status object; with --wait one compact object per\n"
     "                 line: the reply, then each poll\n"
     "Options not given take the daemon's defaults (above).  Refused (exit 1): a\n"
     "migration already running or an NBD export on the daemon (EBUSY), a read-only\n"
     "VBD (EROFS), a daemon built without libnbd (EOPNOTSUPP).\n"
     "Common options: -d D -n N, --ctl-dir DIR (see vbd-ctl --help).\n"},
    {"status", "migrate status", run_status,
     "Usage: vbd-ctl migrate status -d D -n N [--watch [--interval S]] [--json]\n"
     "The migration's state (none, connecting, copying, ready, cutover, failed,\n"
     "aborted), mode, partner, progress, rate and ETA, forwarded writes, bytes sent\n"
     "against the disk's size, the error of a failed one.  Exit 0 when the daemon\n"
     "answered, whatever the state.\n"
     "\n"
     "  --watch        follow it: a progress bar on a terminal, one line per poll\n"
     "                 otherwise, until the state is ready or cutover (exit 0),\n"
     "                 failed, aborted or none (exit 1)\n"
     "  --interval S   seconds between polls (default 1, from 0.1)\n"
     "  -j, --json     the status object; with --watch one compact object per line\n"
     "Common options: -d D -n N, -t/--timeout S (each answer; default 10),\n"
     "--ctl-dir DIR (see vbd-ctl --help).\n"},
    {"cutover", "migrate cutover", run_cutover,
     "Usage: vbd-ctl migrate cutover -d D -n N [--wait-ready [--interval S]] [--json]\n"
     "Finish a migration that is ready: the daemon pauses the VBD (drains it), copies\n"
     "what is left (precopy), flushes both sides and answers: the partner's image is\n"
     "then complete and consistent, and the VBD stays paused for the toolstack to\n"
     "detach it ('vbd-ctl migrate abort' resumes it here instead).  Exit 0 in state\n"
     "cutover; 1 if the migration is not ready (EAGAIN) or the final flush failed (the\n"
     "state is then failed and the VBD resumed).\n"
     "\n"
     "  --wait-ready   first show the progress until the state is ready (exit 1 if it\n"
     "                 fails or is aborted instead), then cut over\n"
     "  --interval S   seconds between polls (default 1, from 0.1)\n"
     "  -t, --timeout S  seconds to wait for the cutover's answer (default 120)\n"
     "  -j, --json     the status object; with --wait-ready one compact object per\n"
     "                 line: each poll, then the cutover's answer\n"
     "Common options: -d D -n N, --ctl-dir DIR (see vbd-ctl --help).\n"},
    {"abort", "migrate abort", run_abort,
     "Usage: vbd-ctl migrate abort -d D -n N [--json]\n"
     "Drop the partner at once; the source image is untouched and the guest goes on\n"
     "using it.  After a cutover this resumes the VBD here.  State aborted; a new\n"
     "start begins from scratch.  Exit 1 if no migration is running (ENOENT).\n"
     "Common options: -d D -n N, -t/--timeout S (default 30), --ctl-dir DIR\n"
     "(see vbd-ctl --help).\n"},
};

static void print_help(FILE *f)
{
        fprintf(f, "Usage: vbd-ctl migrate start|status|cutover|abort -d D -n N [OPTIONS]\n"
                   "Move a running guest's disk to an NBD server (the partner) with the\n"
                   "daemon's mirror.\n"
                   "\n"
                   "  start    start copying (--to URI); --wait follows it until ready\n"
                   "  status   state, progress, rate, ETA; --watch follows it\n"
                   "  cutover  pause the VBD and flush both sides: the partner has the disk\n"
                   "  abort    drop the partner; the guest goes on with the local image\n"
                   "\n"
                   "Exit codes: 0 the awaited state (ready, cutover) or the answer; 1 the\n"
                   "migration failed or was aborted, or the daemon refused; 2 usage; 3..6 as\n"
                   "for every verb.  'vbd-ctl migrate SUB --help' shows a sub-command's\n"
                   "options; see vbd-ctl(8).\n");
}

static int run_start(struct mig *m, int argc, char **argv)
{
        static const struct option extra[] = {
            {"to", required_argument, NULL, OPT_TO},
            {"mode", required_argument, NULL, OPT_MODE},
            {"share", required_argument, NULL, OPT_SHARE},
            {"rate", required_argument, NULL, OPT_RATE},
            {"region", required_argument, NULL, OPT_REGION},
            {"zeroed", no_argument, NULL, OPT_ZEROED},
            {"depth", required_argument, NULL, OPT_DEPTH},
            {"wait", no_argument, NULL, OPT_WAIT},
            {"interval", required_argument, NULL, OPT_INTERVAL},
            {},
        };
        struct vbdctl *o = m->o;
        json_t *args, *st;
        char a[32], b[32];
        int r, timeout_s = -1;

        if ((r = parse(m, &subs[0], argc, argv, extra)))
                return r;
        if (!m->to[0])
                return vbdctl_usage_error(o, "--to URI is required");
        /* The common --timeout is the partner's timeout here. */
        if (o->timeout_ms >= 0) {
                timeout_s = o->timeout_ms / 1000;
                if (timeout_s < 1 || timeout_s > 3600)
                        return vbdctl_usage_error(o, "--timeout: 1..3600 seconds");
                o->timeout_ms = -1;
        }
        if (m->have_interval && !m->follow)
                return vbdctl_usage_error(o, "--interval goes with --wait");
        args = json_pack("{s:s}", "to", m->to);
        if (m->mode)
                json_object_set_new(args, "mode", json_string(m->mode));
        if (m->have_share)
                json_object_set_new(args, "share", json_integer(m->share));
        if (m->have_rate)
                json_object_set_new(args, "rate", json_integer((json_int_t)m->rate));
        if (m->have_region)
                json_object_set_new(args, "region", json_integer((json_int_t)m->region));
        if (timeout_s > 0)
                json_object_set_new(args, "timeout", json_integer(timeout_s));
        if (m->zeroed)
                json_object_set_new(args, "zeroed", json_true());
        if (m->have_depth)
                json_object_set_new(args, "depth", json_integer(m->depth));
        if ((r = call(m, "migrate-start", args, START_WAIT_MS, &st)))
                return r;
        if ((r = check_state(m, st))) {
                json_decref(st);
                return r;
        }
        if (!m->follow) {
                if (o->json) {
                        vbdctl_print_json(st);
                        return 0;
                }
                printf("%s: migration to %s started (%s, %s in regions of %s): %s\n",
                       vbdctl_name(o->domid, o->devid), vbdctl_jstr(st, "to"),
                       vbdctl_jstr(st, "mode"), fmt_bytes(a, sizeof(a), jnum(st, "size")),
                       fmt_bytes(b, sizeof(b), jnum(st, "region_size")), vbdctl_jstr(st, "state"));
                json_decref(st);
                return 0;
        }
        if (!m->stream)
                printf("%s: migrating to %s (%s)\n", vbdctl_name(o->domid, o->devid),
                       vbdctl_jstr(st, "to"), vbdctl_jstr(st, "mode"));
        return follow_report(m, st);
}

static int run_status(struct mig *m, int argc, char **argv)
{
        static const struct option extra[] = {
            {"watch", no_argument, NULL, OPT_WATCH},
            {"interval", required_argument, NULL, OPT_INTERVAL},
            {},
        };
        struct vbdctl *o = m->o;
        json_t *st;
        int r;

        if ((r = parse(m, &subs[1], argc, argv, extra)))
                return r;
        if (m->have_interval && !m->follow)
                return vbdctl_usage_error(o, "--interval goes with --watch");
        if ((r = call(m, "migrate-status", NULL, vbdctl_timeout(o, POLL_WAIT_MS), &st)))
                return r;
        if (!m->follow) {
                if ((r = check_state(m, st))) {
                        json_decref(st);
                        return r;
                }
                if (o->json) {
                        vbdctl_print_json(st);
                        return 0;
                }
                print_summary(o, st);
                json_decref(st);
                return 0;
        }
        return follow_report(m, st);
}

static int run_cutover(struct mig *m, int argc, char **argv)
{
        static const struct option extra[] = {
            {"wait-ready", no_argument, NULL, OPT_WAIT_READY},
            {"interval", required_argument, NULL, OPT_INTERVAL},
            {},
        };
        struct vbdctl *o = m->o;
        json_t *st;
        int r;

        if ((r = parse(m, &subs[2], argc, argv, extra)))
                return r;
        if (m->have_interval && !m->follow)
                return vbdctl_usage_error(o, "--interval goes with --wait-ready");
        if (m->follow) {
                json_t *last;

                if ((r = call(m, "migrate-status", NULL, vbdctl_timeout(o, POLL_WAIT_MS), &st)) ||
                    (r = follow(m, st, &last)))
                        return r;
                if (strcmp(vbdctl_jstr(last, "state"), "cutover") == 0) {
                        /* Someone else cut over meanwhile: done all the same. */
                        print_reached(m, last);
                        json_decref(last);
                        return 0;
                }
                json_decref(last);
        }
        if ((r = call(m, "migrate-cutover", NULL, vbdctl_timeout(o, 120000), &st)))
                return r;
        if ((r = check_state(m, st))) {
                json_decref(st);
                return r;
        }
        if (m->stream)
                print_line_json(st);
        else if (o->json)
                vbdctl_print_json(json_incref(st));
        else
                printf("%s: cut over to %s in %lld ms of downtime: the partner has the whole "
                       "disk; the VBD stays paused (detach it, or 'vbd-ctl migrate abort' to "
                       "resume it here)\n",
                       vbdctl_name(o->domid, o->devid), vbdctl_jstr(st, "to"),
                       vbdctl_jint(st, "downtime_ms"));
        r = strcmp(vbdctl_jstr(st, "state"), "cutover") == 0 ? 0 : report_lost(m, st);
        json_decref(st);
        return r;
}

static int run_abort(struct mig *m, int argc, char **argv)
{
        struct vbdctl *o = m->o;
        json_t *st;
        int r;

        if ((r = parse(m, &subs[3], argc, argv, NULL)))
                return r;
        if ((r = call(m, "migrate-abort", NULL, vbdctl_timeout(o, 30000), &st)))
                return r;
        if ((r = check_state(m, st))) {
                json_decref(st);
                return r;
        }
        if (o->json) {
                vbdctl_print_json(st);
                return 0;
        }
        printf("%s: migration to %s aborted at %.1f%%; the VBD serves its local image\n",
               vbdctl_name(o->domid, o->devid), vbdctl_jstr(st, "to"),
               (int)(progress(st) * 1000) / 10.0);
        json_decref(st);
        return 0;
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
        for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
                if (strcmp(name, subs[i].name))
                        continue;
                o->verb = subs[i].verb;
                argv[1] = argv[0]; /* getopt's messages name the program */
                return subs[i].run(&m, argc - 1, argv + 1);
        }
        return vbdctl_usage_error(o, "'%s': give start, status, cutover or abort", name);
}

const struct vbdctl_verb vbdctl_verb_migrate = {
    .name = "migrate",
    .run = run,
    .args = "start|status|cutover|abort -d D -n N [OPTIONS] (see vbd-ctl migrate --help)",
    .summary = "copy the disk to an NBD server while the guest runs, then cut over",
};
