/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl backup and vbd-ctl restore.
 *
 * backup runs the daemon's "backup" job: a point-in-time copy of the VBD
 * while the guest runs.  To a directory, it keeps a chain: the first backup
 * is full (NNNN-full.qcow2), each later one an incremental (NNNN-inc.qcow2,
 * a qcow2 overlay whose backing file is the one before) holding only the
 * blocks changed since the previous backup's checkpoint, and a manifest
 * (vbd-backup.json) listing them.  The manifest is replaced (written,
 * synced, renamed) only when a backup completed, so a failed, cancelled or
 * interrupted backup leaves the chain as it was and the next one builds on
 * the last that completed.  To a file, a full backup (or an incremental
 * with --since and --backing).  To an NBD URI, into an existing export: a
 * full backup, or with --since the changes onto the backup it holds.
 *
 * restore writes the image of one backup of a chain (or of one file) to a
 * new file: it starts an export-only vbdd on the chain and runs the same job
 * with a raw target, so the holes stay holes (vbdctl_copy_image,
 * image-copy.c, which vbd-ctl layer flatten uses too).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/parse.h"
#include "vbd-ctl.h"

#define MANIFEST "vbd-backup.json"

struct args {
        const char *to, *checkpoint, *format, *granularity, *since, *backing, *rate, *depth;
        const char *output, *from_cp, *method, *snapshot;
        long index;
        bool full, incremental, no_progress, keep_checkpoints, status, cancel;
};

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct args *a = data;

        switch (c) {
        case 'T':
                a->to = arg;
                break;
        case 'F':
                a->full = true;
                break;
        case 'I':
                a->incremental = true;
                break;
        case 'c':
                a->checkpoint = arg;
                break;
        case 'f':
                a->format = arg;
                break;
        case 'g':
                a->granularity = arg;
                break;
        case 's':
                a->since = arg;
                break;
        case 'b':
                a->backing = arg;
                break;
        case 'r':
                a->rate = arg;
                break;
        case 'D':
                a->depth = arg;
                break;
        case 'P':
                a->no_progress = true;
                break;
        case 'K':
                a->keep_checkpoints = true;
                break;
        case 'S':
                a->status = true;
                break;
        case 'M':
                a->method = arg;
                break;
        case 'N':
                a->snapshot = arg;
                break;
        case 'X':
                a->cancel = true;
                break;
        case 'o':
                a->output = arg;
                break;
        case 'C':
                a->from_cp = arg;
                break;
        case 'x': {
                char *end;

                errno = 0;
                a->index = strtol(arg, &end, 10);
                if (errno || *end || a->index < 1)
                        return vbdctl_usage_error(o, "--index: a number from 1: %s", arg);
                break;
        }
        }
        return 0;
}

/* ---- the manifest ---- */

static int path_join(char *buf, size_t size, const char *dir, const char *name)
{
        int n = snprintf(buf, size, "%s/%s", dir, name);

        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static json_t *manifest_load(const char *dir, json_error_t *jerr)
{
        char path[PATH_MAX];

        if (path_join(path, sizeof(path), dir, MANIFEST) < 0)
                return NULL;
        if (access(path, F_OK) < 0)
                return json_pack("{s:i,s:[]}", "version", 1, "backups");
        return json_load_file(path, 0, jerr);
}

static int fsync_path(const char *path, int flags)
{
        int fd = open(path, flags | O_CLOEXEC), r = 0;

        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                r = -errno;
        close(fd);
        return r;
}

static int manifest_save(const char *dir, json_t *m)
{
        char path[PATH_MAX], tmp[PATH_MAX + 8];
        int r;

        if (path_join(path, sizeof(path), dir, MANIFEST) < 0)
                return -ENAMETOOLONG;
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        if (json_dump_file(m, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) < 0)
                return -EIO;
        if ((r = fsync_path(tmp, O_RDONLY)) < 0)
                return r;
        if (rename(tmp, path) < 0)
                return -errno;
        return fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

/* ---- backup ---- */

static bool is_dir(const char *path)
{
        struct stat st;

        return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Does the device have checkpoint name?  (-1: no tracker) */
static int device_has_checkpoint(struct vbdctl *o, const char *name, char *why, size_t size)
{
        json_t *st, *cp;
        size_t i;
        int found = 0;

        if (vbdctl_call_vbd(o, "checkpoint-status", NULL, vbdctl_timeout(o, 10000), &st))
                return -1;
        if (!json_is_true(json_object_get(st, "tracking"))) {
                snprintf(why, size, "the device does not track changes%s%s",
                         *vbdctl_jstr(st, "reason") ? ": " : "", vbdctl_jstr(st, "reason"));
                json_decref(st);
                return -1;
        }
        json_array_foreach(json_object_get(st, "checkpoints"), i,
                           cp) if (!strcmp(vbdctl_jstr(cp, "name"), name)) found = 1;
        if (!found)
                snprintf(why, size, "the device has no checkpoint %s (its change map was %s)", name,
                         *vbdctl_jstr(st, "reason") ? vbdctl_jstr(st, "reason")
                                                    : "reset or the checkpoint was removed");
        json_decref(st);
        return found;
}

/* Remove this chain's checkpoints other than keep (older backups, and those
 * of backups that never completed). */
static void prune_checkpoints(struct vbdctl *o, const char *prefix, const char *keep)
{
        json_t *st, *cp, *res;
        size_t i;

        if (vbdctl_call_vbd(o, "checkpoint-status", NULL, vbdctl_timeout(o, 10000), &st))
                return;
        json_array_foreach(json_object_get(st, "checkpoints"), i, cp)
        {
                const char *name = vbdctl_jstr(cp, "name");

                if (strncmp(name, prefix, strlen(prefix)) || !strcmp(name, keep))
                        continue;
                if (vbdctl_call_vbd(o, "checkpoint-start",
                                    json_pack("{s:s,s:s}", "op", "remove", "name", name),
                                    vbdctl_timeout(o, 60000), &res) == 0)
                        json_decref(res);
        }
        json_decref(st);
}

static int backup_dir(struct vbdctl *o, struct args *a, json_t *job)
{
        char dir[PATH_MAX], target[PATH_MAX], part[PATH_MAX + 8], backing[PATH_MAX];
        char name[64], prefix[32], file[32], why[512] = "";
        json_error_t jerr;
        json_t *m, *list, *last = NULL, *st = NULL, *res, *entry;
        const char *id;
        bool incremental;
        size_t n;
        int r;

        if (!realpath(a->to, dir))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: %s", a->to, strerror(errno));
        m = manifest_load(dir, &jerr);
        if (!m || !json_is_array(json_object_get(m, "backups")))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s/%s: not a backup manifest%s%s",
                                   dir, MANIFEST, m ? "" : ": ", m ? "" : jerr.text);
        if (!json_is_string(json_object_get(m, "id"))) {
                char idbuf[16];
                unsigned v;
                FILE *f = fopen("/dev/urandom", "re");

                if (!f || fread(&v, sizeof(v), 1, f) != 1)
                        v = (unsigned)time(NULL) ^ (unsigned)getpid();
                if (f)
                        fclose(f);
                snprintf(idbuf, sizeof(idbuf), "%08x", v);
                json_object_set_new(m, "id", json_string(idbuf));
                json_object_set_new(m, "device", json_string(vbdctl_name(o->domid, o->devid)));
        }
        id = json_string_value(json_object_get(m, "id"));
        snprintf(prefix, sizeof(prefix), "bk-%s-", id);
        list = json_object_get(m, "backups");
        n = json_array_size(list);
        if (n)
                last = json_array_get(list, n - 1);
        incremental = !a->full && last;
        if (a->incremental && !last)
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false,
                                   "%s: no backup yet to build on: run --full first", dir);
        if (incremental &&
            device_has_checkpoint(o, vbdctl_jstr(last, "checkpoint"), why, sizeof(why)) != 1) {
                if (a->incremental)
                        return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false,
                                           "no incremental possible: %s", why);
                fprintf(stderr, "vbd-ctl: full backup: %s\n", why);
                incremental = false;
        }
        snprintf(file, sizeof(file), "%04zu-%s.qcow2", n + 1, incremental ? "inc" : "full");
        snprintf(name, sizeof(name), "%s%04zu", prefix, n + 1);
        if (path_join(target, sizeof(target), dir, file) < 0)
                return vbdctl_fail(o, VBDCTL_EXIT_USAGE, false, "%s: path too long", dir);
        snprintf(part, sizeof(part), "%s.part", target);
        if (unlink(part) == 0) /* an earlier attempt that died */
                fprintf(stderr, "vbd-ctl: removed %s, left by an interrupted backup\n", part);
        /* Checkpoints of this chain that no complete backup stands for (a
         * backup whose daemon died): removing them merges their changes back. */
        if (!a->keep_checkpoints)
                prune_checkpoints(o, prefix, last ? vbdctl_jstr(last, "checkpoint") : "");
        json_object_set_new(job, "target", json_string(part));
        json_object_set_new(job, "checkpoint", json_string(name));
        if (incremental) {
                /* by its name: the chain's directory can move */
                snprintf(backing, sizeof(backing), "%s", vbdctl_jstr(last, "file"));
                if (!*backing || strchr(backing, '/'))
                        return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false,
                                           "%s/%s: bad file name \"%s\" in the manifest", dir,
                                           MANIFEST, backing);
                json_object_set_new(job, "since", json_string(vbdctl_jstr(last, "checkpoint")));
                json_object_set_new(job, "backing", json_string(backing));
                if (json_integer_value(json_object_get(m, "granularity")))
                        json_object_set(job, "granularity", json_object_get(m, "granularity"));
        }
        if ((r = vbdctl_call_vbd(o, "backup-start", job, vbdctl_timeout(o, 60000), &res)))
                return r;
        json_decref(res);
        {
                char sock[PATH_MAX];

                vbdctl_socket_path(o->dir, o->domid, o->devid, sock, sizeof(sock));
                r = vbdctl_wait_job(o, sock, !a->no_progress && !o->json && isatty(2), &st);
        }
        if (r) {
                json_decref(st);
                return r;
        }
        if (rename(part, target) < 0 || fsync_path(dir, O_RDONLY | O_DIRECTORY) < 0)
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: %s", target, strerror(errno));
        entry = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "file", file, "kind",
                          incremental ? "incremental" : "full", "checkpoint", name, "time",
                          (json_int_t)time(NULL), "size", (json_int_t)0, "bytes",
                          (json_int_t)vbdctl_jint(st, "bytes_done"), "granularity",
                          (json_int_t)vbdctl_jint(st, "granularity"), "elapsed_ms",
                          (json_int_t)vbdctl_jint(st, "elapsed_ms"));
        json_array_append_new(list, entry);
        json_object_set_new(m, "granularity", json_integer(vbdctl_jint(st, "granularity")));
        if ((r = manifest_save(dir, m)) < 0)
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s/%s: %s", dir, MANIFEST,
                                   strerror(-r));
        if (!a->keep_checkpoints)
                prune_checkpoints(o, prefix, name);
        json_object_set_new(st, "file", json_string(target));
        json_object_set_new(st, "kind", json_string(incremental ? "incremental" : "full"));
        if (o->json)
                vbdctl_print_json(st);
        else {
                printf("%s: %s backup %s: %lld bytes copied in %.1f s, checkpoint %s\n",
                       vbdctl_name(o->domid, o->devid), incremental ? "incremental" : "full",
                       target, vbdctl_jint(st, "bytes_done"),
                       (double)vbdctl_jint(st, "elapsed_ms") / 1000., name);
                json_decref(st);
        }
        json_decref(m);
        return 0;
}

static bool is_nbd_uri(const char *t)
{
        return !strncmp(t, "nbd://", 6) || !strncmp(t, "nbd+unix://", 11) ||
               !strncmp(t, "nbds://", 7) || !strncmp(t, "nbds+unix://", 12);
}

static int backup_file(struct vbdctl *o, struct args *a, json_t *job)
{
        char target[PATH_MAX], sock[PATH_MAX];
        json_t *res, *st = NULL;
        int r;

        if (is_nbd_uri(a->to)) {
                if (a->format || a->backing)
                        return vbdctl_usage_error(o, "an NBD export has no --format or --backing");
                if (a->incremental && !a->since)
                        return vbdctl_usage_error(o, "--incremental needs --since: the export "
                                                     "holds the backup of that checkpoint");
                snprintf(target, sizeof(target), "%s", a->to);
        } else if (a->to[0] == '/')
                snprintf(target, sizeof(target), "%s", a->to);
        else if (!getcwd(target, sizeof(target)) ||
                 strlen(target) + strlen(a->to) + 2 > sizeof(target))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: path too long", a->to);
        else
                strcat(strcat(target, "/"), a->to);
        if (a->incremental && !is_nbd_uri(a->to) && (!a->since || !a->backing))
                return vbdctl_usage_error(o, "--incremental to a file needs --since and --backing");
        json_object_set_new(job, "target", json_string(target));
        if (a->checkpoint)
                json_object_set_new(job, "checkpoint", json_string(a->checkpoint));
        if (a->since)
                json_object_set_new(job, "since", json_string(a->since));
        if (a->backing)
                json_object_set_new(job, "backing", json_string(a->backing));
        if ((r = vbdctl_call_vbd(o, "backup-start", job, vbdctl_timeout(o, 60000), &res)))
                return r;
        json_decref(res);
        vbdctl_socket_path(o->dir, o->domid, o->devid, sock, sizeof(sock));
        if ((r = vbdctl_wait_job(o, sock, !a->no_progress && !o->json && isatty(2), &st))) {
                json_decref(st);
                return r;
        }
        if (o->json)
                vbdctl_print_json(st);
        else {
                printf("%s: backup %s: %lld bytes copied in %.1f s\n",
                       vbdctl_name(o->domid, o->devid), target, vbdctl_jint(st, "bytes_done"),
                       (double)vbdctl_jint(st, "elapsed_ms") / 1000.);
                json_decref(st);
        }
        return 0;
}

static const struct option backup_opts[] = {
    {"to", required_argument, NULL, 'T'},
    {"full", no_argument, NULL, 'F'},
    {"incremental", no_argument, NULL, 'I'},
    {"checkpoint", required_argument, NULL, 'c'},
    {"format", required_argument, NULL, 'f'},
    {"granularity", required_argument, NULL, 'g'},
    {"since", required_argument, NULL, 's'},
    {"backing", required_argument, NULL, 'b'},
    {"rate", required_argument, NULL, 'r'},
    {"depth", required_argument, NULL, 'D'},
    {"no-progress", no_argument, NULL, 'P'},
    {"keep-checkpoints", no_argument, NULL, 'K'},
    {"status", no_argument, NULL, 'S'},
    {"cancel", no_argument, NULL, 'X'},
    {"method", required_argument, NULL, 'M'},
    {"snapshot", required_argument, NULL, 'N'},
    {},
};

/*
 * --method rsync: the baseline vbd replaces.  A point-in-time raw copy of
 * the image (the same job, full, to SNAPSHOT), then rsync --inplace
 * --no-whole-file of it onto the destination (a file, or rsync's
 * [USER@]HOST:PATH), so that only the blocks rsync finds different cross
 * the network; but both sides read their whole file, every time.
 */
static int backup_rsync(struct vbdctl *o, struct args *a, json_t *job)
{
        char snap[PATH_MAX], sock[PATH_MAX];
        json_t *res, *st = NULL;
        pid_t pid;
        int r, status;

        if (a->snapshot)
                snprintf(snap, sizeof(snap), "%s", a->snapshot);
        else if (snprintf(snap, sizeof(snap), "%s/vbd-rsync-%u.raw",
                          getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp",
                          (unsigned)getpid()) >= (int)sizeof(snap))
                return vbdctl_usage_error(o, "TMPDIR too long");
        if (snap[0] != '/')
                return vbdctl_usage_error(o, "--snapshot: an absolute path");
        json_object_set_new(job, "target", json_string(snap));
        json_object_set_new(job, "format", json_string("raw"));
        if ((r = vbdctl_call_vbd(o, "backup-start", job, vbdctl_timeout(o, 60000), &res)))
                return r;
        json_decref(res);
        vbdctl_socket_path(o->dir, o->domid, o->devid, sock, sizeof(sock));
        r = vbdctl_wait_job(o, sock, !a->no_progress && !o->json && isatty(2), &st);
        json_decref(st);
        if (r) {
                unlink(snap);
                return r;
        }
        pid = fork();
        if (pid < 0) {
                unlink(snap);
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "fork: %s", strerror(errno));
        }
        if (pid == 0) {
                if (o->json)
                        dup2(2, 1); /* stdout stays JSON */
                execlp("rsync", "rsync", "--inplace", "--no-whole-file", "--sparse",
                       "--ignore-times", "--stats", snap, a->to, (char *)NULL);
                fprintf(stderr, "vbd-ctl: cannot run rsync: %s\n", strerror(errno));
                _exit(127);
        }
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        unlink(snap);
        if (!WIFEXITED(status) || WEXITSTATUS(status))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "rsync to %s failed (%s %d)",
                                   a->to, WIFEXITED(status) ? "exit" : "signal",
                                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        if (o->json)
                vbdctl_print_json(json_pack("{s:s,s:s}", "method", "rsync", "to", a->to));
        else
                printf("%s: rsync backup to %s done\n", vbdctl_name(o->domid, o->devid), a->to);
        return 0;
}

/* --status, --cancel: the running (or last) backup of the VBD. */
static int status_or_cancel(struct vbdctl *o, bool cancel)
{
        json_t *st;
        int r = vbdctl_call_vbd(o, cancel ? "backup-cancel" : "backup-status", NULL,
                                vbdctl_timeout(o, cancel ? 60000 : 10000), &st);

        if (r)
                return r;
        if (cancel && !o->json) {
                printf("%s: backup cancelled\n", vbdctl_name(o->domid, o->devid));
                json_decref(st);
                return 0;
        }
        if (o->json) {
                vbdctl_print_json(st);
                return 0;
        }
        printf("%s: backup %s", vbdctl_name(o->domid, o->devid), vbdctl_jstr(st, "state"));
        if (*vbdctl_jstr(st, "target"))
                printf(" to %s%s%s: %lld of %lld bytes, %lld writes held (max %lld us)",
                       vbdctl_jstr(st, "target"), *vbdctl_jstr(st, "since") ? ", since " : "",
                       vbdctl_jstr(st, "since"), vbdctl_jint(st, "bytes_done"),
                       vbdctl_jint(st, "bytes_total"), vbdctl_jint(st, "writes_held"),
                       vbdctl_jint(st, "held_max_us"));
        if (*vbdctl_jstr(st, "error"))
                printf(": %s", vbdctl_jstr(st, "error"));
        putchar('\n');
        json_decref(st);
        return 0;
}

static int run_backup(struct vbdctl *o, int argc, char **argv)
{
        struct args a = {0};
        json_t *job;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, backup_opts, opt, &a)) || (r = vbdctl_need_vbd(o)))
                return r;
        if (a.status || a.cancel) {
                if (a.to || (a.status && a.cancel))
                        return vbdctl_usage_error(o, "--status or --cancel, alone");
                return status_or_cancel(o, a.cancel);
        }
        if (!a.to)
                return vbdctl_usage_error(o, "--to DIR|FILE|NBD-URI is required");
        if (a.full && a.incremental)
                return vbdctl_usage_error(o, "--full or --incremental, not both");
        job = json_object();
        if (a.format)
                json_object_set_new(job, "format", json_string(a.format));
        if (a.granularity) {
                uint64_t v;

                if (vbd_parse_size(a.granularity, &v) < 0)
                        return vbdctl_usage_error(o, "--granularity: a size: %s", a.granularity);
                json_object_set_new(job, "granularity", json_integer((json_int_t)v));
        }
        if (a.rate) {
                uint64_t v;

                if (vbd_parse_size(a.rate, &v) < 0)
                        return vbdctl_usage_error(o, "--rate: bytes/s (a size, 0: no cap): %s",
                                                  a.rate);
                json_object_set_new(job, "rate", json_integer((json_int_t)v));
        }
        if (a.depth) {
                uint64_t v;

                if (vbd_parse_size(a.depth, &v) < 0 || v < 1 || v > 8)
                        return vbdctl_usage_error(o, "--depth: 1 to 8: %s", a.depth);
                json_object_set_new(job, "depth", json_integer((json_int_t)v));
        }
        if (a.method && strcmp(a.method, "rsync") && strcmp(a.method, "cbt"))
                return vbdctl_usage_error(o, "--method cbt (the default) or rsync");
        if (a.method && !strcmp(a.method, "rsync")) {
                if (a.incremental || a.since || a.backing || a.checkpoint || a.format)
                        return vbdctl_usage_error(o, "--method rsync: always the whole image");
                return backup_rsync(o, &a, job);
        }
        if (a.snapshot)
                return vbdctl_usage_error(o, "--snapshot is for --method rsync");
        if (!is_nbd_uri(a.to) && is_dir(a.to)) {
                if (a.format && strcmp(a.format, "qcow2"))
                        return vbdctl_usage_error(o, "a backup directory holds qcow2 files");
                if (a.since || a.backing || a.checkpoint)
                        return vbdctl_usage_error(o, "--since, --backing and --checkpoint are for "
                                                     "a file; a directory keeps its own");
                r = backup_dir(o, &a, job);
        } else {
                r = backup_file(o, &a, job);
        }
        return r;
}

const struct vbdctl_verb vbdctl_verb_backup = {
    .name = "backup",
    .run = run_backup,
    .args = "-d D -n N --to DIR|FILE|NBD-URI [--full|--incremental] [--rate BPS] [--json] ... | "
            "--method rsync --to DEST [--snapshot FILE] | --status | --cancel",
    .summary = "point-in-time backup of a running VBD: a chain of full + incrementals",
};

/* ---- restore ---- */

/* The chain file for the restore: 0 or an exit code. */
static int restore_source(struct vbdctl *o, struct args *a, const char *from, char *src,
                          size_t size)
{
        char dir[PATH_MAX];
        json_error_t jerr;
        json_t *m, *list, *e = NULL, *it;
        size_t i;

        if (!is_dir(from)) {
                if (a->from_cp || a->index)
                        return vbdctl_usage_error(o, "--checkpoint/--index need a directory");
                if (!realpath(from, src))
                        return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: %s", from,
                                           strerror(errno));
                return 0;
        }
        if (!realpath(from, dir))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: %s", from, strerror(errno));
        m = manifest_load(dir, &jerr);
        list = m ? json_object_get(m, "backups") : NULL;
        if (!json_array_size(list)) {
                json_decref(m);
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: no backups in %s", dir,
                                   MANIFEST);
        }
        if (a->index)
                e = json_array_get(list, (size_t)a->index - 1);
        else if (a->from_cp) {
                json_array_foreach(
                    list, i, it) if (!strcmp(vbdctl_jstr(it, "checkpoint"), a->from_cp)) e = it;
        } else
                e = json_array_get(list, json_array_size(list) - 1);
        if (!e) {
                json_decref(m);
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: no such backup", dir);
        }
        if (path_join(src, size, dir, vbdctl_jstr(e, "file")) < 0) {
                json_decref(m);
                return vbdctl_fail(o, VBDCTL_EXIT_USAGE, false, "%s: path too long", dir);
        }
        json_decref(m);
        return 0;
}

static int run_restore(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"output", required_argument, NULL, 'o'}, {"checkpoint", required_argument, NULL, 'C'},
            {"index", required_argument, NULL, 'x'},  {"format", required_argument, NULL, 'f'},
            {"no-progress", no_argument, NULL, 'P'},  {},
        };
        struct args a = {0};
        char src[PATH_MAX], out[PATH_MAX], image[PATH_MAX + 8];
        json_t *st = NULL;
        int r;

        const char *from = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;

        /* the source first: vbd-ctl restore DIR|FILE -o OUTPUT ... */
        if (from) {
                argv++;
                argc--;
        }
        for (int i = 1; i < argc; i++)
                if (!strcmp(argv[i], "-o"))
                        argv[i] = (char *)"--output";
        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &a)))
                return r;
        if (!from || !a.output)
                return vbdctl_usage_error(o, "restore DIR|FILE -o OUTPUT");
        if (a.format && strcmp(a.format, "raw") && strcmp(a.format, "qcow2"))
                return vbdctl_usage_error(o, "--format raw or qcow2");
        if ((r = restore_source(o, &a, from, src, sizeof(src))))
                return r;
        if (access(a.output, F_OK) == 0)
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s exists: not overwriting it",
                                   a.output);
        if (a.output[0] == '/')
                snprintf(out, sizeof(out), "%s", a.output);
        else if (!getcwd(out, sizeof(out)) || strlen(out) + strlen(a.output) + 2 > sizeof(out))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: path too long", a.output);
        else
                strcat(strcat(out, "/"), a.output);
        if ((r = vbdctl_image_spec(src, image, sizeof(image))) < 0)
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: %s", src, strerror(-r));
        r = vbdctl_copy_image(o, image, src, out, a.format ? a.format : "raw",
                              !a.no_progress && !o->json && isatty(2), &st);
        if (r)
                return r;
        json_object_set_new(st, "source", json_string(src));
        if (o->json)
                vbdctl_print_json(st);
        else {
                printf("restored %s to %s: %lld bytes in %.1f s\n", src, out,
                       vbdctl_jint(st, "bytes_done"),
                       (double)vbdctl_jint(st, "elapsed_ms") / 1000.);
                json_decref(st);
        }
        return 0;
}

const struct vbdctl_verb vbdctl_verb_restore = {
    .name = "restore",
    .run = run_restore,
    .args = "DIR|FILE -o OUTPUT [--checkpoint NAME | --index N] [--format raw|qcow2] [--json]",
    .summary = "write the image of one backup (a chain's) to a new file",
};
