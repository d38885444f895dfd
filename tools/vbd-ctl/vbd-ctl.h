/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl internals: the options every verb shares, output helpers and the
 * verb table.  One file per verb: cmd-<verb>.c.
 */
#pragma once

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "libvbdctl.h"

struct vbdctl {
        struct vbd_config conf;
        const char *config_path;      /* NULL: the default, may be missing */
        char dir[VBD_CONFIG_STR_MAX]; /* runtime dir */
        bool json;
        int timeout_ms; /* -1: the verb's default */
        bool have_domid, have_devid;
        uint32_t domid, devid;
        const char *verb;
};

struct vbdctl_verb {
        const char *name;
        int (*run)(struct vbdctl *o, int argc, char **argv);
        const char *args;    /* for usage */
        const char *summary; /* one line */
};

extern const struct vbdctl_verb vbdctl_verb_list, vbdctl_verb_info, vbdctl_verb_stats,
    vbdctl_verb_pause, vbdctl_verb_resume, vbdctl_verb_detach, vbdctl_verb_reopen,
    vbdctl_verb_log_level, vbdctl_verb_spawn, vbdctl_verb_attach, vbdctl_verb_watch,
    vbdctl_verb_version, vbdctl_verb_migrate, vbdctl_verb_checkpoint, vbdctl_verb_backup,
    vbdctl_verb_restore, vbdctl_verb_snapshot, vbdctl_verb_layer, vbdctl_verb_mount,
    vbdctl_verb_umount;

/*
 * Parse a verb's options: the common ones (-d/--domid, -n/--devid, -j/--json,
 * --ctl-dir, -t/--timeout, -h/--help) plus extra (terminated by a zero entry)
 * whose codes go to handle (returns 0, or an exit code to stop).  Returns
 * 0, or an exit code (usage: 2; --help: -1 meaning "exit 0").
 */
int vbdctl_parse(struct vbdctl *o, int argc, char **argv, const struct option *extra,
                 int (*handle)(struct vbdctl *o, int c, const char *arg, void *data), void *data);
/* Require -d and -n: 0 or VBDCTL_EXIT_USAGE (with a message). */
int vbdctl_need_vbd(struct vbdctl *o);

int vbdctl_usage_error(struct vbdctl *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Report an error (stderr; with --json also {"ok":false,...} on stdout) and
 * return the exit code for it.  daemon: the daemon answered the error. */
int vbdctl_fail(struct vbdctl *o, int code, bool daemon, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Call the daemon -d/-n names; 0 with *ret_result, or the exit code (reported). */
int vbdctl_call_vbd(struct vbdctl *o, const char *cmd, json_t *args, int timeout_ms,
                    json_t **ret_result);

/* Print a JSON value (pretty) on stdout; decrefs it. */
void vbdctl_print_json(json_t *j);

int vbdctl_timeout(struct vbdctl *o, int def_ms);

/* Getters that tolerate missing fields. */
long long vbdctl_jint(json_t *obj, const char *key);
const char *vbdctl_jstr(json_t *obj, const char *key);

/* Spawning daemons (cmd-spawn.c, also used by watch). */
struct vbdctl_spawn {
        uint32_t domid, devid, backend_domid;
        const char *image; /* NULL: vbdd reads params from xenstore */
        const char *mode;  /* NULL: default */
        const char *type;
        const char *vbdd; /* path */
        const char *log;  /* NULL: <dir>/vbdd-D-N.log */
        bool systemd;
        int timeout_ms;
        bool wait; /* wait for the socket */
};
/* Start vbdd; wait until it answers on its socket (if sp->wait).  0 with
 * *ret_pid (0 under systemd), or an exit code (reported). */
int vbdctl_spawn_vbdd(struct vbdctl *o, const struct vbdctl_spawn *sp, pid_t *ret_pid);

/* spawn and attach share their options (cmd-spawn.c). */
struct vbdctl_spawn_args {
        struct vbdctl_spawn sp;
        const char *vdev;
        bool no_xenstore, have_bdomid;
};
int vbdctl_spawn_opt(struct vbdctl *o, int c, const char *arg, void *data);
void vbdctl_spawn_defaults(struct vbdctl *o, struct vbdctl_spawn *sp);
int vbdctl_spawn_report(struct vbdctl *o, pid_t pid, const char *what);

/* The backup job's progress and its copies (image-copy.c). */
/* Poll the job on path (a control socket) until it ends: 0 done, else an
 * exit code (reported); *ret the last status (the caller decrefs it). */
int vbdctl_wait_job(struct vbdctl *o, const char *path, bool progress, json_t **ret);
/*
 * Copy the image spec opens (driver:PATH, a whole backing chain) into the
 * new file out (an absolute path) of format "raw" or "qcow2", standalone
 * (no backing file), with an export-only vbdd's backup job; holes stay
 * holes.  what names the source in messages.  0 with *ret_st (the job's
 * last status, the caller decrefs it), or an exit code (reported).
 */
int vbdctl_copy_image(struct vbdctl *o, const char *spec, const char *what, const char *out,
                      const char *format, bool progress, json_t **ret_st);

/* An export-only vbdd of one image on <dir>/nbd.sock, its control socket in
 * dir too (export.c: restore, mount). */
struct vbdctl_export {
        char dir[4096], ctl[4096], nbd[4096], log[4096];
        uint32_t domid, devid;
        pid_t pid;
        int status; /* after vbdctl_export_stop: its wait status, -1 unknown (not our child) */
};
/* "qcow2:PATH" (by its magic) or "raw:PATH": 0 or -errno. */
int vbdctl_image_spec(const char *path, char *buf, size_t size);
/* Start it (detach: in a session of its own, to outlive vbd-ctl) and wait
 * until it serves.  0, or -errno with msg saying why (vbdd's own message:
 * a lock held by another process, a missing backing file...); nothing is
 * left running then. */
int vbdctl_export_start(struct vbdctl *o, const char *dir, const char *image, bool writable,
                        bool detach, struct vbdctl_export *ex, char *msg, size_t size);
/* SIGTERM (vbdd flushes as it exits), wait up to timeout_ms (then SIGKILL),
 * remove its sockets and log; ex->status says how it exited.  0 or
 * -ETIMEDOUT. */
int vbdctl_export_stop(struct vbdctl_export *ex, int timeout_ms);
/* A daemon's log's first line, without vbdd's "vbd[D/N] vbdd: " prefix. */
void vbdctl_first_line(const char *file, char *msg, size_t size);
/* The integer a file starts with (a sysfs value, a pid file), or def. */
int vbdctl_read_int(const char *path, int def);
/* Does pid's command line mention s?  (A pid in a state file may have been reused.) */
bool vbdctl_pid_mentions(pid_t pid, const char *s);
/* Wait until pid is gone (a child or not): 0 or -ETIMEDOUT; a child's wait
 * status in *ret_status (NULL: not wanted; left alone for another's). */
int vbdctl_wait_gone(pid_t pid, int timeout_ms, int *ret_status);

/*
 * A mount of an image on a private mount point (cmd-mount.c: vbd-ctl layer
 * create), with a state file like vbd-ctl mount's (mount --list shows it,
 * umount of its directory cleans up after a vbd-ctl that was killed).
 * start: 0, or -errno with msg and nothing left behind.  stop: unmount,
 * flush down to vbdd, release everything: 0, or -errno with msg (-EBUSY:
 * the mount point is busy, nothing was undone; call it again).  The
 * caller free()s the handle after a stop that returned 0.
 */
struct vbdctl_mount;
int vbdctl_mount_start(struct vbdctl *o, const char *image, bool rw, unsigned partition,
                       const char *fstype, struct vbdctl_mount **ret, char *msg, size_t size);
const char *vbdctl_mount_dir(const struct vbdctl_mount *vm);
const char *vbdctl_mount_fstype(const struct vbdctl_mount *vm);
/* A --fstype value: letters, digits, '.' and '_', 1 to 31 of them. */
bool vbdctl_fstype_ok(const char *t);
int vbdctl_mount_stop(struct vbdctl_mount *vm, char *msg, size_t size);

/* A VBD name for messages: "5/51712". */
const char *vbdctl_name(uint32_t domid, uint32_t devid);

/* xenstore, as the toolstack (xs.c). */
struct xs_handle;
/* NULL with the failure reported. */
struct xs_handle *vbdctl_xs_open(struct vbdctl *o);
/* malloc'd value or NULL (errno). */
char *vbdctl_xs_read(struct xs_handle *xs, const char *path);
/* In one transaction: write kv pairs (NULL-terminated {name, value}) under
 * dir, then set dir's permissions to owner (n) + reader (r).  -errno. */
int vbdctl_xs_write_dir(struct xs_handle *xs, const char *dir, const char *const *kv,
                        unsigned owner, unsigned reader);
int vbdctl_xs_write(struct xs_handle *xs, const char *path, const char *value);
int vbdctl_xs_rm(struct xs_handle *xs, const char *path);
/* /local/domain/B/backend/TYPE/D/N */
void vbdctl_backend_path(char *buf, size_t size, unsigned bdomid, const char *type, uint32_t domid,
                         uint32_t devid);

/* cmd-layer.c: the fingerprint of the backing chain below image (a qcow2
 * file): "sha256:" and 64 hex digits over each backing file's format,
 * virtual size, file size and SHA-256 (not its path).  ret_files (may be
 * NULL): a JSON array of those, one object a file.  -EINVAL + err when
 * image has no backing file. */
#define VBDCTL_SUM_MAX 72
struct vbd_err;
int vbdctl_backing_sum(const char *image, char fp[VBDCTL_SUM_MAX], json_t **ret_files,
                       struct vbd_err *err);
