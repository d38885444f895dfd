/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl migrate start: stack the mirror over the image and start copying
 * (migrate-start); --wait follows it until ready. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmd-migrate.h"

/* --to SPEC: no migration may be running (its bridge would be replaced);
 * start the bridge with the VBD's size, and take a target made here as
 * reading zeroes. */
static int start_bridge(struct mig *m)
{
        struct vbdctl *o = m->o;
        const char *state;
        bool created = false;
        json_t *cur;
        uint64_t size;
        int r;

        if ((r = mig_call(m, "migrate-status", NULL, MIG_POLL_WAIT_MS, &cur)))
                return r;
        state = vbdctl_jstr(cur, "state");
        if (!strcmp(state, "connecting") || !strcmp(state, "copying") || !strcmp(state, "ready") ||
            !strcmp(state, "cutting") || !strcmp(state, "cutover")) {
                r = vbdctl_fail(o, -EBUSY, true, "%s: a migration to %s is %s; abort it first",
                                vbdctl_name(o->domid, o->devid), vbdctl_jstr(cur, "to"), state);
                json_decref(cur);
                return r;
        }
        size = (uint64_t)vbdctl_jint(cur, "size");
        json_decref(cur);
        if (!size)
                return vbdctl_fail(o, -EIO, true, "%s: the daemon gave no disk size",
                                   vbdctl_name(o->domid, o->devid));
        if ((r = mig_bridge_start(m, size, &created)))
                return r;
        if (created)
                m->zeroed = true; /* a new image reads zeroes: holes need not be sent */
        return 0;
}

/* The file of the qcow2 image at the bottom of a stack spec ("cbt:qcow2:F,o"),
 * or NULL: buf holds it. */
static const char *qcow2_file(const char *spec, char *buf, size_t size)
{
        const char *p = strstr(spec, "qcow2:");
        size_t n;

        if (!p)
                return NULL;
        p += 6;
        n = strcspn(p, ",");
        if (!n || n >= size)
                return NULL;
        memcpy(buf, p, n);
        buf[n] = '\0';
        return buf;
}

/*
 * --shallow: the partner must have the same backing chain as the VBD's
 * qcow2 image, checked by fingerprint (vbd-ctl layer sum) before anything
 * starts: the one given (--shallow=FP, computed on the destination host),
 * or, into an existing qcow2 target (--to qcow2:FILE), FILE's own.
 */
static int check_shallow(struct mig *m)
{
        struct vbdctl *o = m->o;
        char src[4096], dst[4096], fp_src[VBDCTL_SUM_MAX], fp_dst[VBDCTL_SUM_MAX];
        struct vbd_err err = {0};
        const char *top, *want;
        json_t *info;
        int r;

        if (m->zeroed)
                return vbdctl_usage_error(o, "--shallow and --zeroed: the partner reads its "
                                             "backing chain, not zeroes");
        if ((r = mig_call(m, "info", NULL, MIG_POLL_WAIT_MS, &info)))
                return r;
        top = qcow2_file(vbdctl_jstr(info, "image"), src, sizeof(src));
        if (!top) {
                r = vbdctl_fail(o, -EINVAL, true,
                                "%s: --shallow: the VBD serves %s, not a qcow2 image over a "
                                "backing file",
                                vbdctl_name(o->domid, o->devid), vbdctl_jstr(info, "image"));
                json_decref(info);
                return r;
        }
        json_decref(info);
        if (vbdctl_backing_sum(top, fp_src, NULL, &err) < 0)
                return vbdctl_fail(o, err.code, true, "--shallow: %s", err.msg);
        want = m->shallow_fp;
        if (m->spec[0]) {
                const char *t = qcow2_file(m->spec, dst, sizeof(dst));

                if (!t || strncmp(m->spec, "qcow2:", 6) != 0)
                        return vbdctl_usage_error(o, "--shallow into an image: --to qcow2:FILE");
                if (access(t, F_OK) != 0)
                        return vbdctl_fail(o, -ENOENT, true,
                                           "--shallow: %s does not exist: make it over the same "
                                           "backing file first (vbd-ctl layer clone LAYER -o %s)",
                                           t, t);
                if (vbdctl_backing_sum(t, fp_dst, NULL, &err) < 0)
                        return vbdctl_fail(o, err.code, true, "--shallow: %s", err.msg);
                if (want && strcmp(want, fp_dst) != 0)
                        return vbdctl_fail(o, -EINVAL, true,
                                           "--shallow=%s: %s's backing chain is %s", want, t,
                                           fp_dst);
                want = fp_dst;
        } else if (!want) {
                return vbdctl_usage_error(o, "--shallow to an NBD partner needs the destination's "
                                             "fingerprint: run 'vbd-ctl layer sum IMAGE' where "
                                             "the partner's image is, then --shallow=FP");
        }
        if (strcmp(want, fp_src) != 0)
                return vbdctl_fail(o, -EINVAL, true,
                                   "--shallow: the destination's backing chain (%s) is not the "
                                   "source's (%s, below %s): not migrating",
                                   want, fp_src, top);
        return 0;
}

static int run_start(struct mig *m, int argc, char **argv)
{
        static const struct option extra[] = {
            {"to", required_argument, NULL, MIG_OPT_TO},
            {"mode", required_argument, NULL, MIG_OPT_MODE},
            {"share", required_argument, NULL, MIG_OPT_SHARE},
            {"rate", required_argument, NULL, MIG_OPT_RATE},
            {"region", required_argument, NULL, MIG_OPT_REGION},
            {"zeroed", no_argument, NULL, MIG_OPT_ZEROED},
            {"depth", required_argument, NULL, MIG_OPT_DEPTH},
            {"shallow", optional_argument, NULL, MIG_OPT_SHALLOW},
            {"connections", required_argument, NULL, MIG_OPT_CONNECTIONS},
            {"wait", no_argument, NULL, MIG_OPT_WAIT},
            {"interval", required_argument, NULL, MIG_OPT_INTERVAL},
            {},
        };
        struct vbdctl *o = m->o;
        json_t *args, *st;
        char a[32], b[32];
        int r, timeout_s = -1;

        if ((r = mig_parse(m, &mig_sub_start, argc, argv, extra)))
                return r;
        if (!m->to[0] && !m->spec[0])
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
        if (m->shallow && (r = check_shallow(m)))
                return r;
        if (m->spec[0] && (r = start_bridge(m)))
                return r;
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
        if (m->shallow)
                json_object_set_new(args, "shallow", json_true());
        if (m->have_connections)
                json_object_set_new(args, "connections", json_integer(m->connections));
        if ((r = mig_call(m, "migrate-start", args, MIG_START_WAIT_MS, &st))) {
                if (m->spec[0])
                        json_decref(mig_bridge_stop(m, "refused start"));
                return r;
        }
        if ((r = mig_check_state(m, st))) {
                json_decref(st);
                if (m->spec[0])
                        json_decref(mig_bridge_stop(m, "refused start"));
                return r;
        }
        if (m->spec[0])
                mig_bridge_attach(m, st, NULL);
        if (!m->follow) {
                if (o->json) {
                        vbdctl_print_json(st);
                        return 0;
                }
                printf("%s: migration to %s started (%s, %s in regions of %s): %s\n",
                       vbdctl_name(o->domid, o->devid),
                       m->spec[0] ? m->spec : vbdctl_jstr(st, "to"), vbdctl_jstr(st, "mode"),
                       mig_fmt_bytes(a, sizeof(a), mig_jnum(st, "size")),
                       mig_fmt_bytes(b, sizeof(b), mig_jnum(st, "region_size")),
                       vbdctl_jstr(st, "state"));
                if (m->spec[0])
                        printf("%s: bridge: vbdd pid %lld serves %s on %s\n",
                               vbdctl_name(o->domid, o->devid),
                               vbdctl_jint(json_object_get(st, "bridge"), "pid"), m->spec,
                               vbdctl_jstr(json_object_get(st, "bridge"), "socket"));
                json_decref(st);
                return 0;
        }
        if (!m->stream)
                printf("%s: migrating to %s (%s)\n", vbdctl_name(o->domid, o->devid),
                       m->spec[0] ? m->spec : vbdctl_jstr(st, "to"), vbdctl_jstr(st, "mode"));
        return mig_follow_report(m, st);
}

const struct mig_sub mig_sub_start = {
    .name = "start",
    .verb = "migrate start",
    .run = run_start,
    .help = "Usage: vbd-ctl migrate start -d D -n N --to URI|SPEC [--mode pasm|precopy]\n"
            "         [--share PCT] [--rate BYTES/S] [--region SIZE] [--timeout S] [--zeroed]\n"
            "         [--depth N] [--connections N] [--shallow[=FP]]\n"
            "         [--wait [--interval S]] [--json]\n"
            "Start copying the VBD's disk to an NBD server while the guest runs.  The\n"
            "daemon pauses the VBD, stacks its mirror over the image and resumes; it\n"
            "answers with the status object before the partner is connected.\n"
            "\n"
            "  --to URI       the partner, writable and at least as large as the disk:\n"
            "                 nbd://HOST[:PORT][/NAME], nbd+unix:///NAME?socket=PATH, or\n"
            "                 unix:PATH and tcp:HOST:PORT (vbdd --nbd's forms), turned into\n"
            "                 those URIs (a relative PATH is taken from this directory)\n"
            "  --to SPEC      an image: raw:FILE, qcow2:FILE, rbd:POOL/IMAGE[,conf=F,id=U,\n"
            "                 keyring=K]; vbd-ctl starts a bridge (an export-only vbdd\n"
            "                 serving SPEC on DIR/partners/D-N/nbd.sock, bridge.json beside\n"
            "                 it) and migrates to it; cutover and abort stop it.  A missing\n"
            "                 target is created with the disk's size (rbd: rbd create), a\n"
            "                 smaller one refused\n"
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
            "  --shallow[=FP] the partner has the backing chain of the VBD's qcow2 image\n"
            "                 (a shared base or application layer): only what the top\n"
            "                 image holds is sent.  Checked first: FP, the destination's\n"
            "                 'vbd-ctl layer sum' (needed for an NBD partner), or an\n"
            "                 existing --to qcow2:FILE's own chain, must equal the source's\n"
            "  --connections N  NBD connections to a partner that advertises multi-conn,\n"
            "                 1..8 (default 4): the first carries the forwarded writes\n"
            "                 and the flushes, the others the copy; without multi-conn, one\n"
            "  --wait         then show the progress until the state is ready (exit 0),\n"
            "                 failed or aborted (exit 1); Ctrl-C stops vbd-ctl, not the copy\n"
            "  --interval S   seconds between polls with --wait (default 1, from 0.1)\n"
            "  -j, --json     print the status object; with --wait one compact object per\n"
            "                 line: the reply, then each poll\n"
            "Options not given take the daemon's defaults (above).  Refused (exit 1): a\n"
            "migration already running or an NBD export on the daemon (EBUSY), a read-only\n"
            "VBD (EROFS), a daemon built without libnbd (EOPNOTSUPP).\n"
            "Common options: -d D -n N, --ctl-dir DIR (see vbd-ctl --help).\n",
};
