/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "imgtest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "check.h"

int t_sh(const char *fmt, ...)
{
        char cmd[4096];
        va_list ap;
        int st;

        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        st = system(cmd);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

json_t *t_sh_json(const char *fmt, ...)
{
        char cmd[4096];
        json_error_t jerr;
        json_t *j;
        va_list ap;
        FILE *f;

        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        f = popen(cmd, "r");
        if (!f)
                return NULL;
        j = json_loadf(f, 0, &jerr);
        if (pclose(f) != 0) {
                json_decref(j);
                return NULL;
        }
        return j;
}

long long t_jint(json_t *o, const char *key)
{
        json_t *v = json_object_get(o, key);

        return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

const char *t_jstr(json_t *o, const char *key)
{
        const char *s = json_string_value(json_object_get(o, key));

        return s ? s : "";
}

char *t_path(const char *dir, const char *name)
{
        static char bufs[8][1200];
        static unsigned next;
        char *p = bufs[next++ % 8];

        snprintf(p, sizeof(bufs[0]), "%s/%s", dir, name);
        return p;
}

struct vbd_image *t_image_open(struct ev_loop *loop, struct vbd_aio *aio, const char *spec, bool ro)
{
        struct vbd_err err = {0};
        struct vbd_image *img = vbd_image_open(spec, ro, aio, loop, &err);

        if (!img)
                fprintf(stderr, "open %s: %s\n", spec, err.msg);
        return img;
}

static void drained(void *opaque)
{
        *(bool *)opaque = true;
}

void t_image_close(struct ev_loop *loop, struct vbd_image *img)
{
        bool done = false;

        if (!img)
                return;
        vbd_image_drain(img, drained, &done);
        while (!done)
                ev_run(loop, EVRUN_ONCE);
        CHECK(vbd_image_is_drained(img));
        vbd_image_close(img);
}
