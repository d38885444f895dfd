/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libxenctrl, simulated: enough to ask whether a domain exists or is dying.
 * A destroyed domain is reported as dying (and shut down) while a backend
 * still maps its grants, and not at all once it is gone.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xenctrl.h>

#include "sx-internal.h"

struct xc_interface_core {
        struct simxen *sx;
        uint32_t domid;
};

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
        xc_interface *xch = calloc(1, sizeof(*xch));

        if (!xch)
                return NULL;
        xch->sx = sx_env_open("xc_interface_open", &xch->domid);
        if (!xch->sx) {
                int e = errno;

                free(xch);
                errno = e;
                return NULL;
        }
        return xch;
}

int xc_interface_close(xc_interface *xch)
{
        if (!xch)
                return 0;
        simxen_close(xch->sx);
        free(xch);
        return 0;
}

/* Collects up to max domains with domid >= first, in domid order (lock
 * held); returns how many. */
static unsigned sx_collect(struct simxen *sx, uint32_t first, unsigned max, struct sx_domain **out)
{
        unsigned n = 0;
        uint32_t domid;

        for (domid = first; domid < SX_NR_DOMIDS && n < max; domid++) {
                struct sx_domain *d = sx_dom_any(sx, domid);

                if (d)
                        out[n++] = d;
        }
        return n;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info)
{
        struct sx_domain *doms[SX_MAX_DOMS];
        unsigned i, n;

        if (!xch) {
                errno = EINVAL;
                return -1;
        }
        if (max_doms && !info) {
                errno = EFAULT;
                return -1;
        }
        if (max_doms > SX_MAX_DOMS)
                max_doms = SX_MAX_DOMS;
        sx_lock(xch->sx);
        n = sx_collect(xch->sx, first_domid, max_doms, doms);
        for (i = 0; i < n; i++) {
                const struct sx_domain *d = doms[i];
                xc_dominfo_t *di = &info[i];
                bool dying = d->state == SX_DOM_DYING;

                memset(di, 0, sizeof(*di));
                di->domid = d->domid;
                di->dying = dying;
                di->shutdown = dying;
                di->shutdown_reason = SHUTDOWN_poweroff;
                di->running = !dying;
                di->hvm = d->domid != 0;
                di->nr_pages = d->nr_pages;
                di->max_memkb = (unsigned long)xch->sx->sh->nr_pages * (SIMXEN_PAGE_SIZE / 1024);
                di->nr_online_vcpus = dying ? 0 : 1;
                di->max_vcpu_id = 0;
        }
        sx_unlock(xch->sx);
        return (int)n;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
                          xc_domaininfo_t *info)
{
        struct sx_domain *doms[SX_MAX_DOMS];
        unsigned i, n;

        if (!xch) {
                errno = EINVAL;
                return -1;
        }
        if (max_domains && !info) {
                errno = EFAULT;
                return -1;
        }
        if (max_domains > SX_MAX_DOMS)
                max_domains = SX_MAX_DOMS;
        sx_lock(xch->sx);
        n = sx_collect(xch->sx, first_domain, max_domains, doms);
        for (i = 0; i < n; i++) {
                const struct sx_domain *d = doms[i];
                xc_domaininfo_t *di = &info[i];
                bool dying = d->state == SX_DOM_DYING;

                memset(di, 0, sizeof(*di));
                di->domain = (domid_t)d->domid;
                di->flags = dying ? XEN_DOMINF_dying | XEN_DOMINF_shutdown : XEN_DOMINF_running;
                if (d->domid != 0)
                        di->flags |= XEN_DOMINF_hvm_guest;
                di->tot_pages = d->nr_pages;
                di->max_pages = xch->sx->sh->nr_pages;
                di->nr_online_vcpus = dying ? 0 : 1;
        }
        sx_unlock(xch->sx);
        return (int)n;
}
