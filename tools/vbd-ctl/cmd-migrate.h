/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl migrate internals, shared by its sub-verbs (cmd-migrate-<sub>.c):
 * the parsed options, the calls to the daemon, numbers for people and the
 * follow-and-report tail (cmd-migrate-status.c).
 */
#pragma once

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vbd-ctl.h"

#define MIG_TO_MAX        4096
#define MIG_START_WAIT_MS 60000 /* pause (drain) + stack + resume */
#define MIG_POLL_WAIT_MS  10000

enum {
        MIG_OPT_TO = 0x2000,
        MIG_OPT_MODE,
        MIG_OPT_SHARE,
        MIG_OPT_RATE,
        MIG_OPT_REGION,
        MIG_OPT_ZEROED,
        MIG_OPT_DEPTH,
        MIG_OPT_CONNECTIONS,
        MIG_OPT_WAIT,
        MIG_OPT_WATCH,
        MIG_OPT_INTERVAL,
        MIG_OPT_WAIT_READY,
        MIG_OPT_SWITCH,
        MIG_OPT_SWITCH_TO,
        MIG_OPT_SHALLOW,
};

struct mig {
        struct vbdctl *o;
        /* start */
        char to[MIG_TO_MAX];
        char spec[MIG_TO_MAX]; /* --to SPEC: the image the bridge serves ("" for NBD) */
        const char *mode;
        bool have_share, have_rate, have_region, have_depth, have_connections, zeroed;
        uint32_t share, depth, connections;
        uint64_t rate, region;
        bool shallow;           /* --shallow[=FP] */
        const char *shallow_fp; /* the destination's chain fingerprint, or NULL */
        /* following */
        bool follow;    /* --wait, --watch, --wait-ready */
        bool stream;    /* --json while following: compact lines */
        bool tty;       /* stdout is a terminal: redraw a bar */
        bool bar_shown; /* a bar is on screen without its newline */
        bool have_interval;
        unsigned bar_shape; /* see progress_bar_line() */
        int interval_ms;    /* between polls */
        /* cutover */
        bool switch_bridge;    /* --switch: then serve the bridge's target */
        const char *switch_to; /* --switch-to SPEC: then serve SPEC */
};

/* A sub-verb: cmd-migrate-<name>.c. */
struct mig_sub {
        const char *name, *verb; /* "start", "migrate start" */
        int (*run)(struct mig *m, int argc, char **argv);
        const char *help;
};

extern const struct mig_sub mig_sub_start, mig_sub_status, mig_sub_cutover, mig_sub_abort;

/* ---- cmd-migrate.c ---- */

/* Parse s's options (the common ones, then extra, all handled in one place);
 * 0 or an exit code (-1: --help was printed). */
int mig_parse(struct mig *m, const struct mig_sub *s, int argc, char **argv,
              const struct option *extra);

/* vbdctl_call_vbd(), but while streaming JSON lines an error is one compact
 * line too; strings are sanitized for terminals (not with --json). */
int mig_call(struct mig *m, const char *cmd, json_t *args, int timeout_ms, json_t **ret);
/* A reply must carry a state; 0 or the exit code (reported). */
int mig_check_state(struct mig *m, json_t *st);

double mig_jnum(json_t *obj, const char *key);
/* "56.0 MiB", "120 MiB" */
const char *mig_fmt_bytes(char *buf, size_t size, double v);
/* "0.9/2.0 GiB": both in the unit of the total. */
const char *mig_fmt_pair(char *buf, size_t size, double part, double total);
/* "0:09", "1:02:03"; "?" when unknown (< 0). */
const char *mig_fmt_dur(char *buf, size_t size, double s);
/* bytes synced / size, 0..1 */
double mig_progress(json_t *st);
bool mig_is_precopy(json_t *st);
/* One compact JSON object and a newline on stdout, flushed. */
void mig_print_line_json(json_t *j);

/* ---- cmd-migrate-status.c: output and following ---- */

/* End a bar left on screen, before anything else is printed. */
void mig_bar_end(struct mig *m);
/* The end of a migration that did not reach its goal: stderr, exit 1. */
int mig_report_lost(struct mig *m, json_t *st);
/*
 * Show st, then poll until the state is ready or cutover (0, *ret_last holds
 * the last status), or failed, aborted, none (1), or a call fails (its exit
 * code).  st is consumed.
 */
int mig_follow(struct mig *m, json_t *st, json_t **ret_last);
/* After a followed migration reached ready or cutover: one human line. */
void mig_print_reached(struct mig *m, json_t *st);
/* mig_follow() then mig_print_reached() (start --wait, status --watch). */
int mig_follow_report(struct mig *m, json_t *st);

/* ---- migrate-bridge.c: --to SPEC through an export-only vbdd ---- */

/* raw:FILE, qcow2:FILE, rbd:POOL/IMAGE...: an image spec, not an NBD endpoint. */
bool mig_is_spec(const char *arg);
/* Start the bridge on m->spec (created with vbd_size bytes when missing;
 * refused when smaller) and point m->to at it: 0 or the exit code
 * (reported).  *ret_created: the target was made here (it reads zeroes). */
int mig_bridge_start(struct mig *m, uint64_t vbd_size, bool *ret_created);
/* This VBD's bridge record with "running" (now), or NULL when none. */
json_t *mig_bridge_get(struct mig *m);
/* Stop the bridge (once the mirror has closed its connection), record why;
 * the record, or NULL when there is no bridge. */
json_t *mig_bridge_stop(struct mig *m, const char *why);
/* One line for people about a bridge record. */
void mig_bridge_describe(json_t *b, char *buf, size_t size);
/* Add the bridge's record to a status object ("bridge"), and with one, the
 * target's spec ("target"); stop: stop it first (why).  st is kept. */
void mig_bridge_attach(struct mig *m, json_t *st, const char *stop);
