/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Daemon and vbd-ctl defaults from the config file (ini, parsed with inih),
 * conf/vbd.conf, installed as <sysconfdir>/vbd/vbd.conf; see vbd.conf(5).
 * Command-line options override what the file says.
 *
 * This header also brings in the generated version.h (VBD_VERSION,
 * VBD_SYSCONFDIR, VBD_SBINDIR, ...), which used to be called config.h.
 */
#pragma once

#include <stdbool.h>

#include "version.h"
#include "vbd/driver.h" /* struct vbd_err */

#define VBD_CONFIG_PATH         VBD_SYSCONFDIR "/vbd/vbd.conf"
#define VBD_RUNTIME_DIR_DEFAULT "/run/vbd"
#define VBD_CONFIG_STR_MAX      256
#define VBD_CONFIG_TYPE_MAX     32
#define VBD_CONFIG_MAX_QUEUES   16 /* VBD_RING_MAX_QUEUES */

struct vbd_config {
        /* [daemon] */
        char runtime_dir[VBD_CONFIG_STR_MAX];       /* runtime-dir: control sockets */
        int log_level;                              /* log-level: enum vbd_log_level */
        char debug[VBD_CONFIG_STR_MAX];             /* debug: topics, "" for none */
        char backend_type[VBD_CONFIG_TYPE_MAX + 1]; /* backend-type: vbd3 */
        unsigned backend_domid;                     /* backend-domid: 0 */
        unsigned aio_depth;                         /* aio-depth: 1024 (16..65536) */
        unsigned ctl_max_clients;                   /* ctl-max-clients: 16 (1..1024) */
        unsigned max_queues; /* max-queues: 1..16, 0 (auto): min(4, online CPUs) */
        /* [ctl] */
        char vbdd[VBD_CONFIG_STR_MAX]; /* vbdd: the daemon vbd-ctl starts */
        bool spawn_systemd;            /* spawn = direct | systemd */
        unsigned spawn_timeout_s;      /* spawn-timeout: 10 */
};

/* The built-in defaults. */
void vbd_config_init(struct vbd_config *c);

/*
 * Read path into c (keys not in the file keep their value).  A missing file
 * is fine when !must_exist (returns 0).  Unknown sections or keys and bad
 * values are errors: -EINVAL with err->msg naming the file and line.
 */
int vbd_config_load(struct vbd_config *c, const char *path, bool must_exist, struct vbd_err *err);

/* "err", "warning", "info", "debug" <-> enum vbd_log_level; -EINVAL. */
int vbd_config_parse_log_level(const char *s);
const char *vbd_config_log_level_name(int level);
