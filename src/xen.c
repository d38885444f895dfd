/* SPDX-License-Identifier: LGPL-2.1-or-later */
#define VBD_LOG_TOPIC "xen"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>

#include "util/parse.h"
#include "vbd/log.h"
#include "xen.h"

struct vbd_xen {
        xengnttab_handle *xgt;
        xenevtchn_handle *xce;
        xc_interface *xch; /* optional: only for noticing dead domains */
        struct xs_handle *xsh;
        char **watch_event; /* last event returned by vbd_xs_next_event */
};

void vbd_xen_close(struct vbd_xen *x)
{
        if (!x)
                return;
        free(x->watch_event);
        if (x->xsh)
                xs_close(x->xsh);
        if (x->xch)
                xc_interface_close(x->xch);
        if (x->xce)
                xenevtchn_close(x->xce);
        if (x->xgt)
                xengnttab_close(x->xgt);
        free(x);
}

struct vbd_xen *vbd_xen_open(void)
{
        struct vbd_xen *x = calloc(1, sizeof(*x));
        int r, fl;

        if (!x)
                return NULL;
        x->xgt = xengnttab_open(NULL, 0);
        if (!x->xgt) {
                r = vbd_log_errno(errno, "cannot open the grant table device: %m");
                goto fail;
        }
        x->xce = xenevtchn_open(NULL, 0);
        if (!x->xce) {
                r = vbd_log_errno(errno, "cannot open the event channel device: %m");
                goto fail;
        }
        /* The device blocks in read() by default; we poll it and then drain it. */
        fl = fcntl(xenevtchn_fd(x->xce), F_GETFL);
        if (fl < 0 || fcntl(xenevtchn_fd(x->xce), F_SETFL, fl | O_NONBLOCK) < 0) {
                r = vbd_log_errno(errno, "cannot make the event channel non-blocking: %m");
                goto fail;
        }
        x->xsh = xs_open(0);
        if (!x->xsh) {
                r = vbd_log_errno(errno, "cannot connect to xenstore: %m");
                goto fail;
        }
        x->xch = xc_interface_open(NULL, NULL, 0);
        if (!x->xch)
                vbd_warn("no libxenctrl access (%s): a dead frontend domain is noticed only "
                         "when the toolstack removes the backend",
                         strerror(errno));
        return x;
fail:
        vbd_xen_close(x);
        errno = -r;
        return NULL;
}

void *vbd_xen_map_grants(struct vbd_xen *x, uint32_t domid, unsigned count, const uint32_t *refs)
{
        return xengnttab_map_domain_grant_refs(x->xgt, count, domid, (uint32_t *)refs,
                                               PROT_READ | PROT_WRITE);
}

int vbd_xen_unmap(struct vbd_xen *x, void *addr, unsigned count)
{
        return xengnttab_unmap(x->xgt, addr, count) < 0 ? -errno : 0;
}

int vbd_xen_grant_copy(struct vbd_xen *x, unsigned count, xengnttab_grant_copy_segment_t *segs)
{
        return xengnttab_grant_copy(x->xgt, count, segs) < 0 ? -errno : 0;
}

int vbd_xen_evtchn_fd(struct vbd_xen *x)
{
        return xenevtchn_fd(x->xce);
}

int vbd_xen_evtchn_bind(struct vbd_xen *x, uint32_t domid, uint32_t remote_port,
                        uint32_t *ret_local_port)
{
        xenevtchn_port_or_error_t p = xenevtchn_bind_interdomain(x->xce, domid, remote_port);

        if (p < 0)
                return -errno;
        *ret_local_port = (uint32_t)p;
        return 0;
}

int vbd_xen_evtchn_unbind(struct vbd_xen *x, uint32_t local_port)
{
        return xenevtchn_unbind(x->xce, local_port) < 0 ? -errno : 0;
}

int vbd_xen_evtchn_notify(struct vbd_xen *x, uint32_t local_port)
{
        return xenevtchn_notify(x->xce, local_port) < 0 ? -errno : 0;
}

int vbd_xen_evtchn_ack(struct vbd_xen *x, uint32_t *ret_port)
{
        xenevtchn_port_or_error_t p = xenevtchn_pending(x->xce);

        if (p < 0)
                return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        (void)xenevtchn_unmask(x->xce, (evtchn_port_t)p);
        *ret_port = (uint32_t)p;
        return 1;
}

int vbd_xen_domain_alive(struct vbd_xen *x, uint32_t domid)
{
        xc_dominfo_t info;
        int n;

        if (!x->xch)
                return -ENOSYS;
        n = xc_domain_getinfo(x->xch, domid, 1, &info);
        if (n < 0) /* ESRCH: no domain from domid up (it was the last one): gone */
                return errno == ESRCH ? 0 : -errno;
        if (n == 0 || info.domid != domid)
                return 0;
        return !(info.dying || info.shutdown);
}

char *vbd_xs_read(struct vbd_xen *x, const char *path)
{
        unsigned len;
        char *v = xs_read(x->xsh, XBT_NULL, path, &len);

        if (!v)
                return NULL;
        if (strlen(v) != len) { /* embedded NUL: not a value we accept */
                free(v);
                errno = EINVAL;
                return NULL;
        }
        return v;
}

int vbd_xs_read_uint(struct vbd_xen *x, const char *path, unsigned long long max,
                     unsigned long long *ret)
{
        char *v = vbd_xs_read(x, path);
        int r;

        if (!v)
                return -errno;
        r = vbd_parse_uint(v, max, ret);
        free(v);
        return r;
}

int vbd_xs_exists(struct vbd_xen *x, const char *path)
{
        char *v = vbd_xs_read(x, path);

        if (!v)
                return errno == ENOENT ? 0 : -errno;
        free(v);
        return 1;
}

int vbd_xs_fd(struct vbd_xen *x)
{
        return xs_fileno(x->xsh);
}

int vbd_xs_watch(struct vbd_xen *x, const char *path, const char *token)
{
        return xs_watch(x->xsh, path, token) ? 0 : -errno;
}

int vbd_xs_unwatch(struct vbd_xen *x, const char *path, const char *token)
{
        return xs_unwatch(x->xsh, path, token) ? 0 : -errno;
}

int vbd_xs_next_event(struct vbd_xen *x, const char **ret_path, const char **ret_token)
{
        unsigned n;

        free(x->watch_event);
        x->watch_event = xs_check_watch(x->xsh);
        if (!x->watch_event)
                return 0;
        (void)n;
        *ret_path = x->watch_event[XS_WATCH_PATH];
        *ret_token = x->watch_event[XS_WATCH_TOKEN];
        return 1;
}

static bool xs_read_exists(struct vbd_xen *x, xs_transaction_t t, const char *path)
{
        unsigned len;
        void *v = xs_read(x->xsh, t, path, &len);

        free(v);
        return v != NULL;
}

int vbd_xs_write_all(struct vbd_xen *x, const char *dir, const char *const *kv)
{
        char path[512];

        for (int attempt = 0; attempt < 16; attempt++) {
                xs_transaction_t t = xs_transaction_start(x->xsh);
                bool ok = true;

                if (t == XBT_NULL)
                        return -errno;
                /* Never re-create a directory the toolstack has removed. */
                if (!xs_read_exists(x, t, dir)) {
                        int r = errno == ENOENT ? -ENOENT : -errno;

                        (void)xs_transaction_end(x->xsh, t, true);
                        return r;
                }
                for (unsigned i = 0; kv[i]; i += 2) {
                        snprintf(path, sizeof(path), "%s/%s", dir, kv[i]);
                        if (!xs_write(x->xsh, t, path, kv[i + 1], strlen(kv[i + 1]))) {
                                ok = false;
                                break;
                        }
                }
                if (!ok) {
                        int r = -errno;
                        (void)xs_transaction_end(x->xsh, t, true);
                        return r;
                }
                if (xs_transaction_end(x->xsh, t, false))
                        return 0;
                if (errno != EAGAIN)
                        return -errno;
        }
        return -EAGAIN;
}
