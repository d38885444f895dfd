/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hostile-frontend suite: a victim VBD attacked by its own guest, and a
 * bystander VBD of another guest served at the same time by another vbdd,
 * whose data must stay right throughout.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <xen/io/blkif.h>

#include "check.h"
#include "simfront.h"

#define VICTIM_DOMID    1
#define BYSTANDER_DOMID 2
#define DEVID           51712
#define IMG_SIZE        (8u << 20)

struct hostile {
        const char *name;
        struct simfront_env *env;
        struct simfront_vbd *victim_vbd, *bystander_vbd;
        struct simfront *victim, *bystander;
        char victim_img[4096], bystander_img[4096];
        unsigned bystander_round;
};

/* The checks are check.h's, fatal here: a failure names the test, prints
 * both daemons' logs and stops them. */
/* Environment, both VBDs spawned, the bystander connected.  The victim is
 * only created (simfront_new) unless connect is set. */
void h_setup(struct hostile *h, const char *name, const char *victim_mode, bool connect);
/* The same, the victim's ring in the given protocol ("x86_32-abi"...). */
void h_setup_protocol(struct hostile *h, const char *name, const char *victim_mode, bool connect,
                      const char *victim_protocol);
/* The victim's vbdd offers max_queues (--max-queues) and its frontend asks
 * for queues (simfront_opts.queues); read-write. */
void h_setup_queues(struct hostile *h, const char *name, bool connect, unsigned max_queues,
                    unsigned queues);
/* Both daemons detached; each must exit 0 (a sanitizer report or a crash fails). */
void h_teardown(struct hostile *h);

/* Write and read back a fresh pattern on the bystander, compare with its image. */
void h_bystander_io(struct hostile *h);
/* The victim daemon is still running. */
void h_victim_alive(struct hostile *h);
/* The victim's log contains needle (waits up to 2 s for it to appear). */
void h_expect_log(struct hostile *h, const char *needle);

/* Put one raw request on the victim's ring, notify, return the response
 * status (the id is checked); checks that a response arrives. */
int16_t h_raw_request(struct hostile *h, const blkif_request_t *req);

/* Read the victim's image file. */
void h_image_read(struct hostile *h, uint64_t off, void *buf, size_t len);
