/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libxengnttab, simulated: the mapping / copying side of grant tables, acting
 * as the backend domain (VBD_SIM_DOMID, default 0).
 *
 * Errors follow Linux gntdev + Xen: a map fails as a whole (NULL, EINVAL)
 * if any page cannot be mapped; a grant copy fails as a whole (-1, EINVAL)
 * for malformed segments (no gref side, unknown flag, offset + len beyond
 * the page) and otherwise reports per segment in seg->status with the codes
 * Xen's GNTTABOP_copy uses:
 *   GNTST_bad_domain     the granting domain does not exist or is dying
 *   GNTST_bad_gntref     gref beyond the grant table
 *   GNTST_general_error  entry not in use, granted to another domain, or a
 *                        read-only grant used as copy destination
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xengnttab.h>

#include "sx-internal.h"

struct sx_map {
        struct sx_map *next;
        uint8_t *addr;
        uint32_t count;
        uint32_t recs[];
};

struct xengntdev_handle {
        struct simxen *sx;
        uint32_t domid;
        uint32_t max_grants; /* 0: no limit set */
        uint32_t nr_mapped;
        struct sx_map *maps;
};

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
        xengnttab_handle *h = calloc(1, sizeof(*h));

        if (!h)
                return NULL;
        h->sx = sx_env_open("xengnttab_open", &h->domid);
        if (!h->sx) {
                int e = errno;

                free(h);
                errno = e;
                return NULL;
        }
        return h;
}

/* Unmaps an area already unlinked from h->maps (lock held; the handle's
 * list is guarded by the shared lock too). */
static void sx_map_release_locked(xengnttab_handle *h, struct sx_map *m)
{
        uint32_t i;

        munmap(m->addr, (size_t)m->count * SIMXEN_PAGE_SIZE);
        for (i = 0; i < m->count; i++)
                sx_maprec_release_locked(h->sx, m->recs[i]);
        h->sx->sh->stats.unmaps += m->count;
        h->nr_mapped -= m->count;
}

int xengnttab_close(xengnttab_handle *h)
{
        if (!h)
                return 0;
        /* Unlike gntdev, mappings do not outlive the handle. */
        sx_lock(h->sx);
        while (h->maps) {
                struct sx_map *m = h->maps;

                h->maps = m->next;
                sx_map_release_locked(h, m);
                free(m);
        }
        sx_unlock(h->sx);
        simxen_close(h->sx);
        free(h);
        return 0;
}

int xengnttab_fd(xengnttab_handle *h)
{
        errno = ENOSYS;
        return -1;
}

int xengnttab_set_max_grants(xengnttab_handle *h, uint32_t nr_grants)
{
        if (!h) {
                errno = EINVAL;
                return -1;
        }
        h->max_grants = nr_grants;
        return 0;
}

/* Validate one page to map (lock held); its grant entry or NULL. */
static struct sx_grant *sx_map_check(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot,
                                     struct sx_domain **ret_d)
{
        struct sx_domain *d = sx_dom_alive(h->sx, domid);
        struct sx_grant *g;

        if (!d || ref >= SX_NR_GRANTS)
                return NULL;
        g = &d->grants[ref];
        if (!g->in_use || g->to_domid != h->domid || g->pfn >= h->sx->sh->nr_pages)
                return NULL;
        if (g->readonly && (prot & PROT_WRITE))
                return NULL;
        *ret_d = d;
        return g;
}

/* domids: one per page, or NULL to use domid for all. */
static void *sx_map(xengnttab_handle *h, uint32_t count, const uint32_t *domids, uint32_t domid,
                    const uint32_t *refs, int prot)
{
        struct simxen *sx;
        struct sx_map *m;
        uint8_t *area;
        uint32_t i, nrec = 0, rec = 0;
        int e = EINVAL;

        if (!h || count == 0 || count > SX_MAX_MAP_COUNT || !prot ||
            (prot & ~(PROT_READ | PROT_WRITE))) {
                errno = EINVAL;
                return NULL;
        }
        if (!refs) {
                errno = EFAULT;
                return NULL;
        }
        sx = h->sx;
        m = malloc(sizeof(*m) + count * sizeof(m->recs[0]));
        if (!m)
                return NULL;
        area = mmap(NULL, (size_t)count * SIMXEN_PAGE_SIZE, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (area == MAP_FAILED) {
                e = errno;
                free(m);
                errno = e;
                return NULL;
        }
        sx_lock(sx);
        if (h->max_grants && (uint64_t)h->nr_mapped + count > h->max_grants) {
                e = ENOMEM;
                goto undo;
        }
        for (i = 0; i < count; i++) {
                struct sx_domain *d;
                struct sx_grant *g = sx_map_check(h, domids ? domids[i] : domid, refs[i], prot, &d);
                struct sx_maprec *mr;

                if (!g) {
                        e = EINVAL;
                        goto undo;
                }
                for (; rec < SX_MAX_MAPRECS && sx->sh->maprecs[rec].pid; rec++)
                        ;
                if (rec == SX_MAX_MAPRECS) {
                        e = ENOMEM;
                        goto undo;
                }
                if (mmap(area + (size_t)i * SIMXEN_PAGE_SIZE, SIMXEN_PAGE_SIZE, prot,
                         MAP_SHARED | MAP_FIXED, sx->fd,
                         (off_t)(sx->sh->pages_off + (uint64_t)g->pfn * SIMXEN_PAGE_SIZE)) ==
                    MAP_FAILED) {
                        e = errno;
                        goto undo;
                }
                mr = &sx->sh->maprecs[rec];
                mr->pid = getpid();
                mr->dom_slot = (uint16_t)sx_dom_slot(sx, d);
                mr->dom_gen = d->gen;
                mr->gref = refs[i];
                g->map_count++;
                d->mapped++;
                m->recs[nrec++] = rec;
        }
        sx->sh->stats.maps += count;
        m->addr = area;
        m->count = count;
        m->next = h->maps;
        h->maps = m;
        h->nr_mapped += count;
        sx_unlock(sx);
        return area;
undo:
        for (i = 0; i < nrec; i++)
                sx_maprec_release_locked(sx, m->recs[i]);
        sx_unlock(sx);
        munmap(area, (size_t)count * SIMXEN_PAGE_SIZE);
        free(m);
        errno = e;
        return NULL;
}

void *xengnttab_map_grant_ref(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot)
{
        return sx_map(h, 1, NULL, domid, &ref, prot);
}

void *xengnttab_map_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t *domids,
                               uint32_t *refs, int prot)
{
        if (!domids && count) {
                errno = EFAULT;
                return NULL;
        }
        return sx_map(h, count, domids, 0, refs, prot);
}

void *xengnttab_map_domain_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t domid,
                                      uint32_t *refs, int prot)
{
        return sx_map(h, count, NULL, domid, refs, prot);
}

int xengnttab_unmap(xengnttab_handle *h, void *start_address, uint32_t count)
{
        struct sx_map **pm, *m;

        if (!h) {
                errno = EINVAL;
                return -1;
        }
        sx_lock(h->sx);
        for (pm = &h->maps; (m = *pm); pm = &m->next) {
                if (m->addr != start_address)
                        continue;
                if (m->count != count)
                        break;
                *pm = m->next;
                sx_map_release_locked(h, m);
                sx_unlock(h->sx);
                free(m);
                return 0;
        }
        sx_unlock(h->sx);
        errno = EINVAL;
        return -1;
}

/* The memory a gref names, for a copy (lock held); NULL + *status. */
static uint8_t *sx_copy_resolve(struct simxen *sx, uint32_t our_domid, uint16_t domid, uint32_t ref,
                                bool write, int16_t *status)
{
        struct sx_shared *sh = sx->sh;
        uint8_t slot = sh->dom_slot[domid & (SX_NR_DOMIDS - 1)];
        struct sx_domain *d;
        struct sx_grant *g;

        if (domid >= SX_NR_DOMIDS || slot >= SX_MAX_DOMS) {
                *status = GNTST_bad_domain;
                return NULL;
        }
        d = &sh->doms[slot];
        if (d->state != SX_DOM_ALIVE || d->domid != domid) {
                *status = GNTST_bad_domain;
                return NULL;
        }
        if (ref >= SX_NR_GRANTS) {
                *status = GNTST_bad_gntref;
                return NULL;
        }
        g = &d->grants[ref];
        if (!g->in_use || g->to_domid != our_domid || (write && g->readonly) ||
            g->pfn >= sh->nr_pages) {
                *status = GNTST_general_error;
                return NULL;
        }
        return sx_page_ptr(sx, g->pfn);
}

int xengnttab_grant_copy(xengnttab_handle *h, uint32_t count, xengnttab_grant_copy_segment_t *segs)
{
        const uint16_t known = GNTCOPY_source_gref | GNTCOPY_dest_gref;
        struct simxen *sx;
        uint64_t errors = 0;
        uint32_t i;

        if (!h) {
                errno = EINVAL;
                return -1;
        }
        if (!count)
                return 0;
        if (!segs) {
                errno = EFAULT;
                return -1;
        }
        sx = h->sx;

        /* Malformed segments fail the whole call, as gntdev's ioctl does. */
        for (i = 0; i < count; i++) {
                const xengnttab_grant_copy_segment_t *s = &segs[i];
                bool bad = !(s->flags & known) || (s->flags & ~known);

                if (s->flags & GNTCOPY_source_gref)
                        bad |= (uint32_t)s->source.foreign.offset + s->len > SIMXEN_PAGE_SIZE;
                else
                        bad |= s->len && !s->source.virt;
                if (s->flags & GNTCOPY_dest_gref)
                        bad |= (uint32_t)s->dest.foreign.offset + s->len > SIMXEN_PAGE_SIZE;
                else
                        bad |= s->len && !s->dest.virt;
                if (!bad)
                        continue;
                for (uint32_t j = 0; j < count; j++)
                        segs[j].status = j == i ? GNTST_bad_copy_arg : GNTST_general_error;
                sx_lock(sx);
                sx->sh->stats.grant_copy_calls++;
                sx->sh->stats.grant_copy_segs += count;
                sx->sh->stats.grant_copy_errors += count;
                sx_unlock(sx);
                errno = EINVAL;
                return -1;
        }

        sx_lock(sx);
        for (i = 0; i < count; i++) {
                xengnttab_grant_copy_segment_t *s = &segs[i];
                int16_t st = GNTST_okay;
                uint8_t *src, *dst;

                if (s->flags & GNTCOPY_source_gref) {
                        src = sx_copy_resolve(sx, h->domid, s->source.foreign.domid,
                                              s->source.foreign.ref, false, &st);
                        if (src)
                                src += s->source.foreign.offset;
                } else
                        src = s->source.virt;
                if (st == GNTST_okay && (s->flags & GNTCOPY_dest_gref)) {
                        dst = sx_copy_resolve(sx, h->domid, s->dest.foreign.domid,
                                              s->dest.foreign.ref, true, &st);
                        if (dst)
                                dst += s->dest.foreign.offset;
                } else
                        dst = s->dest.virt;
                if (st == GNTST_okay && s->len && (!src || !dst))
                        st = GNTST_general_error; /* checked above; for analyzers */
                if (st != GNTST_okay) {
                        s->status = st;
                        errors++;
                        continue;
                }
                if (s->len)
                        memmove(dst, src, s->len);
                s->status = GNTST_okay;
        }
        sx->sh->stats.grant_copy_calls++;
        sx->sh->stats.grant_copy_segs += count;
        sx->sh->stats.grant_copy_errors += errors;
        sx_unlock(sx);
        return 0;
}
