/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl migrate status: the daemon's status object, once (a one-screen
 * summary) or followed with --watch.  Also the following that start --wait
 * and cutover --wait-ready share: polling migrate-status, a progress bar
 * redrawn on a tty, one plain line per poll otherwise, one compact JSON
 * object per line with --json, and the report at the end.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cmd-migrate.h"
#include "vbd/macro.h"

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

        mig_fmt_pair(pair, sizeof(pair), mig_jnum(st, "bytes_synced"), mig_jnum(st, "size"));
        mig_fmt_bytes(rate, sizeof(rate), mig_jnum(st, "rate"));
        if (strcmp(state, "ready") == 0 || strcmp(state, "cutover") == 0)
                snprintf(eta, sizeof(eta), "0:00");
        else
                mig_fmt_dur(eta, sizeof(eta), mig_jnum(st, "eta_s"));
        if (mig_is_precopy(st))
                snprintf(extra, sizeof(extra), "pass %lld dirty %s", vbdctl_jint(st, "passes"),
                         mig_fmt_bytes(b1, sizeof(b1), mig_jnum(st, "dirty_bytes")));
        else
                snprintf(extra, sizeof(extra), "fwd %lld writes/%s",
                         vbdctl_jint(st, "writes_forwarded"),
                         mig_fmt_bytes(b1, sizeof(b1), mig_jnum(st, "bytes_forwarded")));
        /* 100% only when all is synced */
        snprintf(buf, size, "%s%s%*d%%%s%s%s%s/s%sETA %s%s%s%s%s", state_first ? state : "",
                 state_first ? sep : "", pad ? 3 : 1, (int)(mig_progress(st) * 100), sep, pair, sep,
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
        const size_t n = VBD_ARRAY_SIZE(shapes);
        char text[256];

        for (; *shape < n; (*shape)++) {
                const char *sep = shapes[*shape].sep;
                unsigned w = shapes[*shape].bar, fill = (unsigned)(mig_progress(st) * w);
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

void mig_bar_end(struct mig *m)
{
        if (m->bar_shown) {
                fputc('\n', stdout);
                fflush(stdout);
                m->bar_shown = false;
        }
}

/* One poll's worth of output while following. */
static void show_progress(struct mig *m, json_t *st)
{
        char line[512];

        if (m->stream) {
                mig_print_line_json(st);
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
        double size = mig_jnum(st, "size"), sent = mig_jnum(st, "bytes_sent");
        char a[32], b[32], c[32], d[32], e[32];

        if (strcmp(state, "none") == 0) {
                printf("%s: no migration\n", vbdctl_name(o->domid, o->devid));
                return;
        }
        printf("%s: migration %s (%s) to %s\n", vbdctl_name(o->domid, o->devid), state,
               vbdctl_jstr(st, "mode"),
               json_object_get(st, "target") ? vbdctl_jstr(st, "target") : vbdctl_jstr(st, "to"));
        printf("  progress   %.1f%%  %s of %s synced (%lld/%lld regions of %s, %lld in flight)\n",
               (int)(mig_progress(st) * 1000) / 10.0,
               mig_fmt_bytes(a, sizeof(a), mig_jnum(st, "bytes_synced")),
               mig_fmt_bytes(b, sizeof(b), size), vbdctl_jint(st, "regions_synced"),
               vbdctl_jint(st, "regions_total"),
               mig_fmt_bytes(c, sizeof(c), mig_jnum(st, "region_size")),
               vbdctl_jint(st, "regions_inflight"));
        printf("  rate       %s/s  ETA %s  elapsed %s\n",
               mig_fmt_bytes(a, sizeof(a), mig_jnum(st, "rate")),
               strcmp(state, "ready") == 0 || strcmp(state, "cutover") == 0
                   ? "0:00"
                   : mig_fmt_dur(b, sizeof(b), mig_jnum(st, "eta_s")),
               mig_fmt_dur(c, sizeof(c), mig_jnum(st, "elapsed_ms") / 1000));
        printf("  forwarded  %lld writes, %s  (%lld guest writes waited)\n",
               vbdctl_jint(st, "writes_forwarded"),
               mig_fmt_bytes(a, sizeof(a), mig_jnum(st, "bytes_forwarded")),
               vbdctl_jint(st, "writes_waited"));
        if (size > 0)
                snprintf(e, sizeof(e), "%.2fx the disk", sent / size);
        else
                snprintf(e, sizeof(e), "-");
        printf("  sent       %s = %s  (copied %s, forwarded %s; zeroes %s)\n",
               mig_fmt_bytes(a, sizeof(a), sent), e,
               mig_fmt_bytes(b, sizeof(b), mig_jnum(st, "bytes_copied")),
               mig_fmt_bytes(c, sizeof(c), mig_jnum(st, "bytes_forwarded")),
               mig_fmt_bytes(d, sizeof(d), mig_jnum(st, "bytes_zeroed")));
        printf("  partner    size %s, %lld requests in flight\n",
               mig_fmt_bytes(a, sizeof(a), mig_jnum(st, "partner_size")),
               vbdctl_jint(st, "partner_inflight"));
        if (mig_is_precopy(st))
                printf("  precopy    %lld passes, %s dirty after the first\n",
                       vbdctl_jint(st, "passes"),
                       mig_fmt_bytes(a, sizeof(a), mig_jnum(st, "dirty_bytes")));
        if (strcmp(state, "cutover") == 0)
                printf("  downtime   %lld ms\n", vbdctl_jint(st, "downtime_ms"));
        if (strcmp(state, "failed") == 0)
                printf("  error      %s\n", vbdctl_jstr(st, "error"));
        if (json_object_get(st, "bridge")) {
                char line[1024];

                mig_bridge_describe(json_object_get(st, "bridge"), line, sizeof(line));
                printf("  bridge     %s\n", line);
        }
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

int mig_report_lost(struct mig *m, json_t *st)
{
        struct vbdctl *o = m->o;
        const char *state = vbdctl_jstr(st, "state"), *name = vbdctl_name(o->domid, o->devid);

        mig_bar_end(m);
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
int mig_follow(struct mig *m, json_t *st, json_t **ret_last)
{
        struct sigaction old_int, old_term;
        int r = 0, sig = 0;

        *ret_last = NULL;
        interrupted = 0;
        catch (SIGINT, &old_int);
        catch (SIGTERM, &old_term);
        for (;;) {
                enum outcome oc;

                if ((r = mig_check_state(m, st)))
                        break;
                show_progress(m, st);
                oc = outcome(vbdctl_jstr(st, "state"));
                if (oc == REACHED) {
                        *ret_last = st;
                        st = NULL;
                        break;
                }
                if (oc == LOST) {
                        r = mig_report_lost(m, st);
                        break;
                }
                json_decref(st);
                st = NULL;
                poll(NULL, 0, m->interval_ms); /* EINTR on a signal */
                if ((sig = interrupted))
                        break;
                if ((r = mig_call(m, "migrate-status", NULL, vbdctl_timeout(m->o, MIG_POLL_WAIT_MS),
                                  &st)))
                        break;
                if ((sig = interrupted))
                        break;
        }
        json_decref(st);
        mig_bar_end(m);
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

void mig_print_reached(struct mig *m, json_t *st)
{
        struct vbdctl *o = m->o;
        const char *name = vbdctl_name(o->domid, o->devid);
        double size = mig_jnum(st, "size");
        char a[32], b[32];

        if (m->stream || o->json)
                return;
        if (strcmp(vbdctl_jstr(st, "state"), "cutover") == 0) {
                printf("%s: cut over to %s (downtime %lld ms); the VBD stays paused\n", name,
                       vbdctl_jstr(st, "to"), vbdctl_jint(st, "downtime_ms"));
                return;
        }
        printf("%s: ready: %s synced in %s, %.2fx the disk sent; %s\n", name,
               mig_fmt_bytes(a, sizeof(a), size),
               mig_fmt_dur(b, sizeof(b), mig_jnum(st, "elapsed_ms") / 1000),
               size > 0 ? mig_jnum(st, "bytes_sent") / size : 0.0,
               mig_is_precopy(st) ? "cutover copies what is dirty"
                                  : "guest writes are forwarded until cutover");
}

int mig_follow_report(struct mig *m, json_t *st)
{
        json_t *last;
        int r = mig_follow(m, st, &last);

        if (r)
                return r;
        mig_print_reached(m, last);
        json_decref(last);
        return 0;
}

static int run_status(struct mig *m, int argc, char **argv)
{
        static const struct option extra[] = {
            {"watch", no_argument, NULL, MIG_OPT_WATCH},
            {"interval", required_argument, NULL, MIG_OPT_INTERVAL},
            {},
        };
        struct vbdctl *o = m->o;
        json_t *st;
        int r;

        if ((r = mig_parse(m, &mig_sub_status, argc, argv, extra)))
                return r;
        if (m->have_interval && !m->follow)
                return vbdctl_usage_error(o, "--interval goes with --watch");
        if ((r = mig_call(m, "migrate-status", NULL, vbdctl_timeout(o, MIG_POLL_WAIT_MS), &st)))
                return r;
        if (!m->follow) {
                if ((r = mig_check_state(m, st))) {
                        json_decref(st);
                        return r;
                }
                mig_bridge_attach(m, st, NULL);
                if (o->json) {
                        vbdctl_print_json(st);
                        return 0;
                }
                print_summary(o, st);
                json_decref(st);
                return 0;
        }
        return mig_follow_report(m, st);
}

const struct mig_sub mig_sub_status = {
    .name = "status",
    .verb = "migrate status",
    .run = run_status,
    .help = "Usage: vbd-ctl migrate status -d D -n N [--watch [--interval S]] [--json]\n"
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
            "--ctl-dir DIR (see vbd-ctl --help).\n",
};
