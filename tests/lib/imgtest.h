/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Helpers of the C tests that drive images through the image layer beside
 * the real tools (tests/interop: qcow2-image, qcow2-create, qcow2-bitmaps):
 * shell commands and their JSON, a file in the test's directory, and an
 * image opened and closed on the test's own loop.
 */
#pragma once

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>

#include "aio.h"
#include "image.h"

/* system(fmt...): the command's exit status, 128 when it did not exit. */
int t_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The JSON a command prints, NULL when it fails or prints none. */
json_t *t_sh_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* o's integer key (-1 when absent), string key ("" when absent). */
long long t_jint(json_t *o, const char *key);
const char *t_jstr(json_t *o, const char *key);
/* dir/name, in one of 8 static buffers (so a few can be live at once). */
char *t_path(const char *dir, const char *name);
/* vbd_image_open; on failure NULL, the reason on stderr. */
struct vbd_image *t_image_open(struct ev_loop *loop, struct vbd_aio *aio, const char *spec,
                               bool ro);
/* Drain (a qcow2 flush round may still be writing), check it is drained,
 * close.  NULL is nothing to do. */
void t_image_close(struct ev_loop *loop, struct vbd_image *img);
