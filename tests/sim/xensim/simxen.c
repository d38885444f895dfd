/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The simulated hypervisor: the shared file, domains, guest pages and the
 * granting side of grant tables.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <stdint.h>
#include <xen/xen.h>

#include "sx-internal.h"

#define SX_SHM_NAME "xen.shm"

void sx_lock(struct simxen *sx)
{
        int r = pthread_mutex_lock(&sx->sh->lock);

        /* A participant died holding the lock: the tables it was changing
         * may be half updated, as after a crashed hypervisor call; go on. */
        if (r == EOWNERDEAD)
                (void)pthread_mutex_consistent(&sx->sh->lock);
}

void sx_unlock(struct simxen *sx)
{
        (void)pthread_mutex_unlock(&sx->sh->lock);
}

static char *sx_path(const char *dir, const char *name)
{
        char *p;

        if (asprintf(&p, "%s/%s", dir, name) < 0)
                return NULL;
        return p;
}

static uint64_t sx_round_up(uint64_t v, uint64_t a)
{
        return (v + a - 1) / a * a;
}

static struct simxen *sx_attach(int fd, size_t size, const char *dir)
{
        struct simxen *sx = calloc(1, sizeof(*sx));
        void *base;

        if (!sx)
                return NULL;
        sx->dir = strdup(dir);
        if (!sx->dir) {
                free(sx);
                return NULL;
        }
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
                int e = errno;

                free(sx->dir);
                free(sx);
                errno = e;
                return NULL;
        }
        sx->sh = base;
        sx->size = size;
        sx->fd = fd;
        return sx;
}

static void sx_set_pointers(struct simxen *sx)
{
        sx->pt = (struct sx_page *)((uint8_t *)sx->sh + sx->sh->page_table_off);
        sx->mem = (uint8_t *)sx->sh + sx->sh->pages_off;
}

struct simxen *simxen_create(const char *dir, unsigned nr_pages)
{
        struct simxen *sx;
        struct sx_shared *sh;
        pthread_mutexattr_t ma;
        uint64_t pt_off, pages_off, size;
        char *tmp = NULL, *path = NULL, name[64];
        int fd = -1, e;

        if (!dir || !*dir || nr_pages == 0 || nr_pages > SX_MAX_PAGES) {
                errno = EINVAL;
                return NULL;
        }
        pt_off = sx_round_up(sizeof(struct sx_shared), 64);
        pages_off =
            sx_round_up(pt_off + (uint64_t)nr_pages * sizeof(struct sx_page), SIMXEN_PAGE_SIZE);
        size = pages_off + (uint64_t)nr_pages * SIMXEN_PAGE_SIZE;

        /* Build the file under a private name and publish it with rename(),
         * so that simxen_open() never sees a half-initialised simulation. */
        snprintf(name, sizeof(name), ".xen.shm.%ld.tmp", (long)getpid());
        tmp = sx_path(dir, name);
        path = sx_path(dir, SX_SHM_NAME);
        if (!tmp || !path) {
                e = ENOMEM;
                goto fail;
        }
        fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
                e = errno;
                goto fail;
        }
        sx = sx_attach(fd, size, dir);
        if (!sx) {
                e = errno;
                goto fail;
        }
        sh = sx->sh;
        sh->version = SX_VERSION;
        sh->nr_pages = nr_pages;
        if (getrandom(&sh->sim_id, sizeof(sh->sim_id), GRND_NONBLOCK) != sizeof(sh->sim_id))
                sh->sim_id =
                    ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)sx;
        sh->file_size = size;
        sh->pages_off = pages_off;
        sh->page_table_off = pt_off;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&sh->lock, &ma);
        pthread_mutexattr_destroy(&ma);
        sh->next_handle_id = 1;
        sh->next_gen = 1;
        memset(sh->dom_slot, SX_NO_SLOT, sizeof(sh->dom_slot));
        /* Domain 0 exists implicitly and never dies. */
        sh->doms[0].domid = 0;
        sh->doms[0].state = SX_DOM_ALIVE;
        sh->doms[0].gen = sh->next_gen++;
        sh->dom_slot[0] = 0;
        sx_set_pointers(sx);
        __atomic_store_n(&sh->magic, SX_MAGIC, __ATOMIC_RELEASE);

        if (rename(tmp, path) < 0) {
                e = errno;
                simxen_close(sx);
                fd = -1;
                unlink(tmp);
                goto fail;
        }
        free(tmp);
        free(path);
        return sx;
fail:
        if (fd >= 0) {
                close(fd);
                unlink(tmp);
        }
        free(tmp);
        free(path);
        errno = e;
        return NULL;
}

struct simxen *simxen_open(const char *dir)
{
        struct simxen *sx;
        struct sx_shared *sh;
        struct stat st;
        char *path;
        int fd, e;

        if (!dir || !*dir) {
                errno = EINVAL;
                return NULL;
        }
        path = sx_path(dir, SX_SHM_NAME);
        if (!path) {
                errno = ENOMEM;
                return NULL;
        }
        fd = open(path, O_RDWR | O_CLOEXEC);
        free(path);
        if (fd < 0)
                return NULL;
        if (fstat(fd, &st) < 0) {
                e = errno;
                goto fail;
        }
        if ((uint64_t)st.st_size < sizeof(struct sx_shared)) {
                e = EINVAL;
                goto fail;
        }
        sx = sx_attach(fd, (size_t)st.st_size, dir);
        if (!sx) {
                e = errno;
                goto fail;
        }
        sh = sx->sh;
        if (__atomic_load_n(&sh->magic, __ATOMIC_ACQUIRE) != SX_MAGIC ||
            sh->version != SX_VERSION || sh->file_size != (uint64_t)st.st_size ||
            sh->nr_pages == 0 || sh->nr_pages > SX_MAX_PAGES || sh->page_table_off < sizeof(*sh) ||
            sh->pages_off % SIMXEN_PAGE_SIZE ||
            sh->pages_off < sh->page_table_off + (uint64_t)sh->nr_pages * sizeof(struct sx_page) ||
            sh->pages_off + (uint64_t)sh->nr_pages * SIMXEN_PAGE_SIZE != sh->file_size) {
                simxen_close(sx);
                errno = EINVAL;
                return NULL;
        }
        sx_set_pointers(sx);
        return sx;
fail:
        close(fd);
        errno = e;
        return NULL;
}

void simxen_close(struct simxen *sx)
{
        if (!sx)
                return;
        munmap(sx->sh, sx->size);
        close(sx->fd);
        free(sx->dir);
        free(sx);
}

struct simxen *sx_env_open(const char *who, uint32_t *ret_domid)
{
        const char *dir = getenv("VBD_SIM_DIR");
        const char *ds = getenv("VBD_SIM_DOMID");
        unsigned long domid = 0;
        struct simxen *sx;
        bool alive;

        if (!dir || !*dir) {
                fprintf(stderr,
                        "%s: VBD_SIM_DIR is not set: this is the simulated Xen library "
                        "(xensim) and needs the directory of a running simulation\n",
                        who);
                errno = ENOENT;
                return NULL;
        }
        if (ds && *ds) {
                char *end;

                errno = 0;
                domid = strtoul(ds, &end, 10);
                if (errno || *end || domid >= DOMID_FIRST_RESERVED) {
                        fprintf(stderr, "%s: VBD_SIM_DOMID='%s' is not a domain id\n", who, ds);
                        errno = EINVAL;
                        return NULL;
                }
        }
        sx = simxen_open(dir);
        if (!sx) {
                int e = errno;

                fprintf(stderr, "%s: cannot attach to the simulated Xen in '%s': %s\n", who, dir,
                        strerror(e));
                errno = e;
                return NULL;
        }
        sx_lock(sx);
        alive = sx_dom_alive(sx, (uint32_t)domid) != NULL;
        sx_unlock(sx);
        if (!alive) {
                fprintf(stderr, "%s: simulated domain %lu (VBD_SIM_DOMID) does not exist\n", who,
                        domid);
                simxen_close(sx);
                errno = ESRCH;
                return NULL;
        }
        *ret_domid = (uint32_t)domid;
        return sx;
}

struct sx_domain *sx_dom_any(struct simxen *sx, uint32_t domid)
{
        uint8_t slot;

        if (domid >= SX_NR_DOMIDS)
                return NULL;
        slot = sx->sh->dom_slot[domid];
        if (slot >= SX_MAX_DOMS || sx->sh->doms[slot].state == SX_DOM_FREE ||
            sx->sh->doms[slot].domid != domid)
                return NULL;
        return &sx->sh->doms[slot];
}

struct sx_domain *sx_dom_alive(struct simxen *sx, uint32_t domid)
{
        struct sx_domain *d = sx_dom_any(sx, domid);

        return d && d->state == SX_DOM_ALIVE ? d : NULL;
}

bool sx_pid_alive(pid_t pid)
{
        char path[64], buf[512], *p;
        ssize_t n;
        int fd;

        if (pid <= 0)
                return false;
        if (pid == getpid())
                return true;
        if (kill(pid, 0) < 0 && errno == ESRCH)
                return false;
        /* A zombie has released its mappings already. */
        snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return errno != ENOENT;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return true;
        buf[n] = '\0';
        p = strrchr(buf, ')');
        if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'))
                return false;
        return true;
}

/* --- Domains ------------------------------------------------------------ */

int simxen_domain_create(struct simxen *sx, uint32_t domid)
{
        struct sx_shared *sh;
        unsigned i;
        int r = -ENOSPC;

        if (!sx)
                return -EINVAL;
        if (domid == 0 || domid >= DOMID_FIRST_RESERVED)
                return domid == 0 ? -EEXIST : -EINVAL;
        sh = sx->sh;
        sx_lock(sx);
        if (sx_dom_any(sx, domid)) {
                r = -EEXIST;
                goto out;
        }
        for (i = 1; i < SX_MAX_DOMS; i++) {
                struct sx_domain *d = &sh->doms[i];

                if (d->state != SX_DOM_FREE)
                        continue;
                memset(d, 0, sizeof(*d));
                d->domid = domid;
                d->gen = sh->next_gen++;
                if (!d->gen)
                        d->gen = sh->next_gen++;
                d->state = SX_DOM_ALIVE;
                sh->dom_slot[domid] = (uint8_t)i;
                r = 0;
                break;
        }
out:
        sx_unlock(sx);
        return r;
}

static void sx_grant_free_locked(struct simxen *sx, struct sx_grant *g)
{
        if (g->pfn < sx->sh->nr_pages && sx->pt[g->pfn].grants)
                sx->pt[g->pfn].grants--;
        memset(g, 0, sizeof(*g));
}

void sx_dom_try_reap_locked(struct simxen *sx, struct sx_domain *d)
{
        struct sx_shared *sh = sx->sh;
        uint32_t i;

        if (d->state != SX_DOM_DYING || d->mapped)
                return;
        for (i = 0; i < SX_NR_GRANTS; i++)
                if (d->grants[i].in_use)
                        sx_grant_free_locked(sx, &d->grants[i]);
        for (i = 0; i < sh->nr_pages; i++)
                if (sx->pt[i].owner == d->domid + 1)
                        memset(&sx->pt[i], 0, sizeof(sx->pt[i]));
        sh->dom_slot[d->domid] = SX_NO_SLOT;
        memset(d, 0, sizeof(*d));
}

int simxen_domain_destroy(struct simxen *sx, uint32_t domid)
{
        struct sx_domain *d;
        uint32_t i;

        if (!sx)
                return -EINVAL;
        if (domid == 0)
                return -EPERM;
        sx_lock(sx);
        d = sx_dom_any(sx, domid);
        if (!d) {
                sx_unlock(sx);
                return -ESRCH;
        }
        d->state = SX_DOM_DYING;
        for (i = 1; i < SX_NR_PORTS; i++)
                if (d->ports[i].state != SX_PORT_FREE)
                        sx_port_close_locked(sx, d, i);
        sx_reclaim_dead_mappers_locked(sx);
        /* Grants still mapped by a backend keep the domain a zombie, as under
         * Xen; the last unmap finishes it. */
        for (i = 0; i < SX_NR_GRANTS; i++)
                if (d->grants[i].in_use && !d->grants[i].map_count)
                        sx_grant_free_locked(sx, &d->grants[i]);
        sx_dom_try_reap_locked(sx, d);
        sx_unlock(sx);
        return 0;
}

/* --- Pages ---------------------------------------------------------------- */

int simxen_page_alloc(struct simxen *sx, uint32_t domid, uint32_t *ret_pfn)
{
        struct sx_shared *sh;
        struct sx_domain *d;
        uint32_t i, pfn;
        int r = -ENOMEM;

        if (!sx || !ret_pfn)
                return -EINVAL;
        sh = sx->sh;
        sx_lock(sx);
        d = sx_dom_alive(sx, domid);
        if (!d) {
                r = -ESRCH;
                goto out;
        }
        for (i = 0; i < sh->nr_pages; i++) {
                pfn = (sh->page_hint + i) % sh->nr_pages;
                if (sx->pt[pfn].owner)
                        continue;
                sx->pt[pfn].owner = domid + 1;
                sx->pt[pfn].grants = 0;
                sh->page_hint = (pfn + 1) % sh->nr_pages;
                d->nr_pages++;
                memset(sx_page_ptr(sx, pfn), 0, SIMXEN_PAGE_SIZE);
                *ret_pfn = pfn;
                r = 0;
                break;
        }
out:
        sx_unlock(sx);
        return r;
}

int simxen_page_free(struct simxen *sx, uint32_t domid, uint32_t pfn)
{
        struct sx_domain *d;
        int r = 0;

        if (!sx)
                return -EINVAL;
        sx_lock(sx);
        d = sx_dom_any(sx, domid);
        if (!d)
                r = -ESRCH;
        else if (pfn >= sx->sh->nr_pages || sx->pt[pfn].owner != domid + 1)
                r = -EINVAL;
        else if (sx->pt[pfn].grants)
                r = -EBUSY;
        else {
                sx->pt[pfn].owner = 0;
                d->nr_pages--;
        }
        sx_unlock(sx);
        return r;
}

void *simxen_page(struct simxen *sx, uint32_t pfn)
{
        if (!sx || pfn >= sx->sh->nr_pages)
                return NULL;
        return sx_page_ptr(sx, pfn);
}

/* --- Grants (granting side) ----------------------------------------------- */

int simxen_grant_access(struct simxen *sx, uint32_t domid, uint32_t to_domid, uint32_t pfn,
                        bool readonly, uint32_t *ret_gref)
{
        struct sx_domain *d;
        uint32_t i, gref;
        int r = -ENOSPC;

        if (!sx || !ret_gref || to_domid >= DOMID_FIRST_RESERVED)
                return -EINVAL;
        sx_lock(sx);
        d = sx_dom_alive(sx, domid);
        if (!d) {
                r = -ESRCH;
                goto out;
        }
        if (pfn >= sx->sh->nr_pages || sx->pt[pfn].owner != domid + 1) {
                r = -EPERM; /* not this domain's page */
                goto out;
        }
        for (i = 0; i < SX_NR_GRANTS - SX_FIRST_GREF; i++) {
                gref = SX_FIRST_GREF + (d->grant_hint + i) % (SX_NR_GRANTS - SX_FIRST_GREF);
                if (d->grants[gref].in_use)
                        continue;
                d->grants[gref] = (struct sx_grant){
                    .in_use = 1, .readonly = readonly, .to_domid = (uint16_t)to_domid, .pfn = pfn};
                sx->pt[pfn].grants++;
                d->grant_hint = gref + 1 - SX_FIRST_GREF;
                *ret_gref = gref;
                r = 0;
                break;
        }
out:
        sx_unlock(sx);
        return r;
}

int simxen_grant_end(struct simxen *sx, uint32_t domid, uint32_t gref)
{
        struct sx_domain *d;
        int r = 0;

        if (!sx)
                return -EINVAL;
        sx_lock(sx);
        d = sx_dom_alive(sx, domid);
        if (!d) {
                r = -ESRCH;
                goto out;
        }
        if (gref >= SX_NR_GRANTS || !d->grants[gref].in_use) {
                r = -EINVAL;
                goto out;
        }
        if (d->grants[gref].map_count)
                sx_reclaim_dead_mappers_locked(sx);
        if (d->grants[gref].map_count) {
                r = -EBUSY;
                goto out;
        }
        sx_grant_free_locked(sx, &d->grants[gref]);
out:
        sx_unlock(sx);
        return r;
}

/* --- Map records ---------------------------------------------------------- */

void sx_maprec_release_locked(struct simxen *sx, uint32_t rec)
{
        struct sx_maprec *m;
        struct sx_domain *d;
        struct sx_grant *g;

        if (rec >= SX_MAX_MAPRECS)
                return;
        m = &sx->sh->maprecs[rec];
        if (!m->pid)
                return;
        if (m->dom_slot < SX_MAX_DOMS && m->gref < SX_NR_GRANTS) {
                d = &sx->sh->doms[m->dom_slot];
                g = &d->grants[m->gref];
                if (d->state != SX_DOM_FREE && d->gen == m->dom_gen && g->map_count) {
                        g->map_count--;
                        if (d->mapped)
                                d->mapped--;
                        if (d->state == SX_DOM_DYING) {
                                if (!g->map_count && g->in_use)
                                        sx_grant_free_locked(sx, g);
                                sx_dom_try_reap_locked(sx, d);
                        }
                }
        }
        memset(m, 0, sizeof(*m));
}

void sx_reclaim_dead_mappers_locked(struct simxen *sx)
{
        pid_t last_dead = 0, last_alive = 0;
        uint32_t i;

        for (i = 0; i < SX_MAX_MAPRECS; i++) {
                pid_t pid = sx->sh->maprecs[i].pid;

                if (!pid || pid == last_alive)
                        continue;
                if (pid != last_dead && sx_pid_alive(pid)) {
                        last_alive = pid;
                        continue;
                }
                last_dead = pid;
                sx_maprec_release_locked(sx, i);
        }
}

void simxen_get_stats(struct simxen *sx, struct simxen_stats *ret)
{
        if (!sx || !ret)
                return;
        sx_lock(sx);
        *ret = sx->sh->stats;
        ret->notifies = __atomic_load_n(&sx->sh->stats.notifies, __ATOMIC_RELAXED);
        sx_unlock(sx);
}
