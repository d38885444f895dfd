/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Between the control socket's transport (control.c) and its commands
 * (control-cmds.c): the server's state, a client, and how a command answers.
 */
#pragma once

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/un.h>

#include "control.h"

struct vbd_err;

struct ctl_client {
        struct vbd_ctl *ctl;
        struct ctl_client *next;
        int fd;
        ev_io rio, wio;
        ev_timer idle;
        char *in; /* VBD_CTL_LINE_MAX + 1 bytes */
        size_t in_len;
        bool discarding; /* skipping the rest of an oversized line */
        bool eof;
        char *out;
        size_t out_len, out_size;
        bool busy;          /* a deferred request is waiting for its reply */
        bool waiting_pause; /* ... and it is a pause */
        json_t *pending_id; /* its "id" */
        uint64_t pause_begin_ms;
};

struct vbd_listener;

struct vbd_ctl {
        struct ev_loop *loop;
        struct vbd_ctl_config cfg;
        char dir[256];
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        struct vbd_listener *listener; /* src/util/listener.c */
        bool started;
        struct ctl_client *clients;
        struct vbd_device *dev;
        struct vbd_xenbus *xb; /* NULL: export-only */
        bool held;             /* the control socket's pause hold on dev */
        bool pausing;          /* ... its drain not yet reported */
        int log_level;
        char debug[256];
        uint64_t start_ms;
        struct vbd_nbd *nbd;        /* NULL: no NBD export */
        void (*stop)(void *opaque); /* export-only: detach */
        void *stop_opaque;
};

struct ctl_cmd;
/* A command returns 0 with *ret set, 1 if it answers later with
 * ctl_deferred_reply() (flag CTL_DEFERRED), or -errno with err filled. */
typedef int (*ctl_cmd_fn)(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args,
                          json_t **ret, struct vbd_err *err);

enum ctl_cmd_flag {
        CTL_GUEST = 1 << 0,          /* needs a guest: not in an export-only daemon */
        CTL_DEFERRED = 1 << 1,       /* may answer later */
        CTL_NOT_BESIDE_NBD = 1 << 2, /* refused while the daemon has an NBD export */
        CTL_DETACH = 1 << 3,         /* once answered, the daemon detaches */
};

struct ctl_cmd {
        const char *name;
        ctl_cmd_fn fn;
        unsigned flags;   /* enum ctl_cmd_flag */
        const char *job;  /* the job type the command routes to (job handlers) */
        const char *noun; /* ... and what its jobs are called in messages */
};

extern const struct ctl_cmd vbd_ctl_cmds[];
extern const unsigned vbd_ctl_ncmds;

bool ctl_reply_ok(struct ctl_client *cl, json_t *id, json_t *result);
bool ctl_reply_err(struct ctl_client *cl, json_t *id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Answer cl's deferred request: result (status >= 0, taken) or status + msg. */
void ctl_deferred_reply(struct ctl_client *cl, int status, const char *msg, json_t *result);
/* Let cl's next request in (after a deferred reply). */
void ctl_client_resume_input(struct ctl_client *cl);
/* cl goes away: forget it where it waits (commands side). */
void ctl_cmds_client_gone(struct ctl_client *cl);
