/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Tests of the simulated hypervisor.  The test process plays the guest and
 * toolstack (simxen_* calls); each check of the backend side runs in a
 * forked child that finds the simulation through VBD_SIM_DIR and uses the
 * ordinary libxengnttab / libxenevtchn / libxenctrl API, as vbdd-sim does.
 *
 *   test-xensim          run the tests
 *   test-xensim bench    also print a micro-benchmark (not timed as a test)
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "check.h"
#include "simxen.h"
#include "vbd/time.h"

/* Every failure ends the process (a child's ends with it); say which one. */
static void check_where(int err)
{
        fprintf(stderr, "  in pid %ld, errno %d (%s)\n", (long)getpid(), err, strerror(err));
}

#define GUEST 1u
#define OTHER 2u

static char sim_dir[256];
static struct simxen *sx;

/* --- helpers -------------------------------------------------------------- */

struct peer {
        pid_t pid;
        int to_child, from_child;   /* parent's ends */
        int to_parent, from_parent; /* child's ends */
};

static void msg_send(int fd, uint32_t v)
{
        CHECK(write(fd, &v, sizeof(v)) == sizeof(v));
}

static uint32_t msg_recv(int fd)
{
        uint32_t v;

        CHECK(read(fd, &v, sizeof(v)) == sizeof(v));
        return v;
}

/* Forks the backend; in the child runs fn and exits with its status. */
static void peer_start(struct peer *p, void (*fn)(struct peer *p, void *arg), void *arg)
{
        int a[2], b[2];

        CHECK(pipe(a) == 0 && pipe(b) == 0);
        p->pid = fork();
        CHECK(p->pid >= 0);
        if (p->pid == 0) {
                close(a[1]);
                close(b[0]);
                p->from_parent = a[0];
                p->to_parent = b[1];
                setenv("VBD_SIM_DIR", sim_dir, 1);
                unsetenv("VBD_SIM_DOMID");
                fn(p, arg);
                _exit(0);
        }
        close(a[0]);
        close(b[1]);
        p->to_child = a[1];
        p->from_child = b[0];
}

static void peer_wait(struct peer *p)
{
        int st;

        CHECK(waitpid(p->pid, &st, 0) == p->pid);
        close(p->to_child);
        close(p->from_child);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "backend child failed (status 0x%x)\n", st);
                exit(1);
        }
}

static bool readable(int fd, int timeout_ms)
{
        struct pollfd pfd = {.fd = fd, .events = POLLIN};

        return poll(&pfd, 1, timeout_ms) == 1 && (pfd.revents & POLLIN);
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t)((i * 131 + seed * 7 + (i >> 8)) ^ seed);
}

static bool same(const uint8_t *p, size_t n, uint32_t seed)
{
        for (size_t i = 0; i < n; i++)
                if (p[i] != (uint8_t)((i * 131 + seed * 7 + (i >> 8)) ^ seed))
                        return false;
        return true;
}

static uint32_t new_page(uint32_t domid, uint32_t seed)
{
        uint32_t pfn;

        CHECK(simxen_page_alloc(sx, domid, &pfn) == 0);
        fill(simxen_page(sx, pfn), SIMXEN_PAGE_SIZE, seed);
        return pfn;
}

static uint32_t grant(uint32_t domid, uint32_t to, uint32_t pfn, bool ro)
{
        uint32_t gref;

        CHECK(simxen_grant_access(sx, domid, to, pfn, ro, &gref) == 0);
        return gref;
}

static xengnttab_grant_copy_segment_t seg_from(uint32_t domid, uint32_t gref, uint16_t off,
                                               void *buf, uint16_t len)
{
        xengnttab_grant_copy_segment_t s = {.len = len, .flags = GNTCOPY_source_gref};

        s.source.foreign.domid = (uint16_t)domid;
        s.source.foreign.ref = gref;
        s.source.foreign.offset = off;
        s.dest.virt = buf;
        s.status = 99;
        return s;
}

static xengnttab_grant_copy_segment_t seg_to(uint32_t domid, uint32_t gref, uint16_t off, void *buf,
                                             uint16_t len)
{
        xengnttab_grant_copy_segment_t s = {.len = len, .flags = GNTCOPY_dest_gref};

        s.dest.foreign.domid = (uint16_t)domid;
        s.dest.foreign.ref = gref;
        s.dest.foreign.offset = off;
        s.source.virt = buf;
        s.status = 99;
        return s;
}

/* --- grant copy ----------------------------------------------------------- */

struct copy_args {
        uint32_t rw, ro, other, ended, rw2;
};

static void copy_backend(struct peer *p, void *arg)
{
        const struct copy_args *a = arg;
        xengnttab_handle *xgt = xengnttab_open(NULL, 0);
        uint8_t buf[SIMXEN_PAGE_SIZE], buf2[SIMXEN_PAGE_SIZE];
        xengnttab_grant_copy_segment_t s[8];

        CHECK(xgt);
        /* Whole page from the guest. */
        s[0] = seg_from(GUEST, a->rw, 0, buf, SIMXEN_PAGE_SIZE);
        CHECK(xengnttab_grant_copy(xgt, 1, s) == 0 && s[0].status == GNTST_okay);
        CHECK(same(buf, SIMXEN_PAGE_SIZE, 1));
        /* Sub-page ranges, several segments in one call. */
        memset(buf, 0, sizeof(buf));
        s[0] = seg_from(GUEST, a->rw, 512, buf, 512);
        s[1] = seg_from(GUEST, a->ro, 4000, buf + 512, 96);
        CHECK(xengnttab_grant_copy(xgt, 2, s) == 0);
        CHECK(s[0].status == GNTST_okay && s[1].status == GNTST_okay);
        uint8_t ref[SIMXEN_PAGE_SIZE];
        fill(ref, sizeof(ref), 1);
        CHECK(memcmp(buf, ref + 512, 512) == 0);
        fill(ref, sizeof(ref), 2);
        CHECK(memcmp(buf + 512, ref + 4000, 96) == 0);
        /* Write into the guest: the parent checks the page afterwards. */
        fill(buf2, sizeof(buf2), 3);
        s[0] = seg_to(GUEST, a->rw, 100, buf2, 200);
        CHECK(xengnttab_grant_copy(xgt, 1, s) == 0 && s[0].status == GNTST_okay);
        /* Gref to gref. */
        s[0] = (xengnttab_grant_copy_segment_t){.len = 4096,
                                                .flags = GNTCOPY_source_gref | GNTCOPY_dest_gref};
        s[0].source.foreign.domid = GUEST;
        s[0].source.foreign.ref = a->ro;
        s[0].dest.foreign.domid = GUEST;
        s[0].dest.foreign.ref = a->rw2;
        CHECK(xengnttab_grant_copy(xgt, 1, s) == 0 && s[0].status == GNTST_okay);

        /* Per-segment refusals, with Xen's codes; good segments still done. */
        memset(buf, 0xee, sizeof(buf));
        s[0] = seg_to(GUEST, a->ro, 0, buf2, 16);           /* read-only as destination */
        s[1] = seg_from(GUEST, a->other, 0, buf, 16);       /* granted to domain 2 */
        s[2] = seg_from(GUEST, a->ended, 0, buf, 16);       /* ended */
        s[3] = seg_from(GUEST, 5000, 0, buf, 16);           /* beyond the table */
        s[4] = seg_from(GUEST, 0, 0, buf, 16);              /* reserved, never granted */
        s[5] = seg_from(77, a->rw, 0, buf, 16);             /* no such domain */
        s[6] = seg_from(GUEST, a->rw, 4000, buf + 100, 96); /* fine */
        s[7] = seg_from(0xffff, a->rw, 0, buf, 16);         /* DOMID_INVALID */
        CHECK(xengnttab_grant_copy(xgt, 8, s) == 0);
        CHECK(s[0].status == GNTST_general_error);
        CHECK(s[1].status == GNTST_general_error);
        CHECK(s[2].status == GNTST_general_error);
        CHECK(s[3].status == GNTST_bad_gntref);
        CHECK(s[4].status == GNTST_general_error);
        CHECK(s[5].status == GNTST_bad_domain);
        CHECK(s[6].status == GNTST_okay);
        CHECK(s[7].status == GNTST_bad_domain);
        fill(ref, sizeof(ref), 1);
        CHECK(memcmp(buf + 100, ref + 4000, 96) == 0);
        CHECK(buf[0] == 0xee && buf[99] == 0xee && buf[196] == 0xee);
        /* The read-only grant is fine as a source. */
        s[0] = seg_from(GUEST, a->ro, 0, buf, 64);
        CHECK(xengnttab_grant_copy(xgt, 1, s) == 0 && s[0].status == GNTST_okay);

        /* Malformed segments fail the call (gntdev: EINVAL) and copy nothing. */
        memset(buf, 0xee, sizeof(buf));
        s[0] = seg_from(GUEST, a->rw, 0, buf, 64);
        s[1] = seg_from(GUEST, a->rw, 4000, buf, 97); /* crosses the page end */
        errno = 0;
        CHECK(xengnttab_grant_copy(xgt, 2, s) == -1 && errno == EINVAL);
        CHECK(s[1].status == GNTST_bad_copy_arg && s[0].status != GNTST_okay);
        CHECK(buf[0] == 0xee);
        s[0] = seg_to(GUEST, a->rw, 4095, buf, 2);
        CHECK(xengnttab_grant_copy(xgt, 1, s) == -1 && errno == EINVAL);
        s[0] = seg_from(GUEST, a->rw, 65535, buf, 65535);
        CHECK(xengnttab_grant_copy(xgt, 1, s) == -1 && errno == EINVAL);
        s[0] = seg_from(GUEST, a->rw, 0, buf, 16);
        s[0].flags = 0; /* local to local */
        CHECK(xengnttab_grant_copy(xgt, 1, s) == -1 && errno == EINVAL);
        s[0].flags = GNTCOPY_source_gref | 0x8;
        CHECK(xengnttab_grant_copy(xgt, 1, s) == -1 && errno == EINVAL);
        s[0] = seg_from(GUEST, a->rw, 0, NULL, 16);
        CHECK(xengnttab_grant_copy(xgt, 1, s) == -1);
        CHECK(xengnttab_grant_copy(xgt, 0, NULL) == 0);
        CHECK(xengnttab_grant_copy(xgt, 3, NULL) == -1);
        CHECK(xengnttab_grant_copy(NULL, 1, s) == -1);
        CHECK(xengnttab_close(xgt) == 0);
        msg_send(p->to_parent, 1);
}

static void test_copy(void)
{
        struct copy_args a;
        uint32_t pfn_rw = new_page(GUEST, 1), pfn_ro = new_page(GUEST, 2);
        uint32_t pfn_other = new_page(GUEST, 4), pfn_rw2 = new_page(GUEST, 5);
        struct simxen_stats st0, st1;
        struct peer p;
        uint8_t ref[SIMXEN_PAGE_SIZE];

        a.rw = grant(GUEST, 0, pfn_rw, false);
        a.ro = grant(GUEST, 0, pfn_ro, true);
        a.other = grant(GUEST, OTHER, pfn_other, false);
        a.rw2 = grant(GUEST, 0, pfn_rw2, false);
        a.ended = grant(GUEST, 0, pfn_other, false);
        CHECK(a.rw >= 8 && a.ro >= 8); /* 0..7 reserved */
        CHECK(simxen_grant_end(sx, GUEST, a.ended) == 0);
        CHECK_ERR(simxen_grant_end(sx, GUEST, a.ended), -EINVAL);
        simxen_get_stats(sx, &st0);

        peer_start(&p, copy_backend, &a);
        CHECK(msg_recv(p.from_child) == 1);
        peer_wait(&p);

        /* The backend's write landed exactly at [100, 300). */
        uint8_t *pg = simxen_page(sx, pfn_rw);
        fill(ref, sizeof(ref), 1);
        CHECK(memcmp(pg, ref, 100) == 0);
        CHECK(memcmp(pg + 300, ref + 300, SIMXEN_PAGE_SIZE - 300) == 0);
        fill(ref, sizeof(ref), 3);
        CHECK(memcmp(pg + 100, ref, 200) == 0);
        /* Read-only page untouched; gref-to-gref copy done. */
        CHECK(same(simxen_page(sx, pfn_ro), SIMXEN_PAGE_SIZE, 2));
        CHECK(same(simxen_page(sx, pfn_rw2), SIMXEN_PAGE_SIZE, 2));

        simxen_get_stats(sx, &st1);
        CHECK(st1.grant_copy_calls - st0.grant_copy_calls == 12);
        CHECK(st1.grant_copy_segs - st0.grant_copy_segs == 21);
        CHECK(st1.grant_copy_errors - st0.grant_copy_errors == 7 + 7);
        printf("ok copy\n");
}

/* --- grant map ------------------------------------------------------------ */

struct map_args {
        uint32_t refs[4], ro, other, single;
};

static void map_backend(struct peer *p, void *arg)
{
        const struct map_args *a = arg;
        xengnttab_handle *xgt = xengnttab_open(NULL, 0);
        uint8_t *m, *r;
        uint32_t refs[4], doms[4];

        CHECK(xgt);
        m = xengnttab_map_domain_grant_refs(xgt, 4, GUEST, (uint32_t *)a->refs,
                                            PROT_READ | PROT_WRITE);
        CHECK(m);
        for (int i = 0; i < 4; i++)
                CHECK(same(m + i * SIMXEN_PAGE_SIZE, SIMXEN_PAGE_SIZE, 10 + i));
        for (int i = 0; i < 4; i++)
                fill(m + i * SIMXEN_PAGE_SIZE, SIMXEN_PAGE_SIZE, 20 + i);
        msg_send(p->to_parent, 1); /* parent checks, writes page 2 */
        CHECK(msg_recv(p->from_parent) == 2);
        CHECK(same(m + 2 * SIMXEN_PAGE_SIZE, SIMXEN_PAGE_SIZE, 30));

        /* Read-only grant: writable map refused, read-only map works. */
        errno = 0;
        CHECK(!xengnttab_map_grant_ref(xgt, GUEST, a->ro, PROT_READ | PROT_WRITE));
        CHECK(errno == EINVAL);
        r = xengnttab_map_grant_ref(xgt, GUEST, a->ro, PROT_READ);
        CHECK(r && same(r, SIMXEN_PAGE_SIZE, 14));
        CHECK(xengnttab_unmap(xgt, r, 1) == 0);
        /* Not ours / bad arguments: whole map refused. */
        CHECK(!xengnttab_map_grant_ref(xgt, GUEST, a->other, PROT_READ));
        CHECK(!xengnttab_map_grant_ref(xgt, 77, a->refs[0], PROT_READ));
        CHECK(!xengnttab_map_grant_ref(xgt, GUEST, 4096, PROT_READ));
        CHECK(!xengnttab_map_grant_ref(xgt, GUEST, 0xffffffffu, PROT_READ));
        CHECK(!xengnttab_map_grant_ref(xgt, GUEST, a->single, PROT_EXEC | PROT_READ));
        CHECK(!xengnttab_map_grant_ref(xgt, GUEST, a->single, 0));
        CHECK(!xengnttab_map_domain_grant_refs(xgt, 0, GUEST, refs, PROT_READ));
        CHECK(!xengnttab_map_domain_grant_refs(xgt, 1u << 30, GUEST, refs, PROT_READ));
        CHECK(!xengnttab_map_domain_grant_refs(xgt, 2, GUEST, NULL, PROT_READ));
        CHECK(!xengnttab_map_grant_ref(NULL, GUEST, a->single, PROT_READ));
        refs[0] = a->single;
        refs[1] = 4000; /* unused */
        refs[2] = a->refs[0];
        CHECK(!xengnttab_map_domain_grant_refs(xgt, 3, GUEST, refs, PROT_READ));
        /* map_grant_refs with per-page domains. */
        refs[0] = a->single;
        refs[1] = a->refs[3];
        doms[0] = doms[1] = GUEST;
        r = xengnttab_map_grant_refs(xgt, 2, doms, refs, PROT_READ);
        CHECK(r && same(r, SIMXEN_PAGE_SIZE, 15) &&
              same(r + SIMXEN_PAGE_SIZE, SIMXEN_PAGE_SIZE, 23));
        CHECK(xengnttab_unmap(xgt, r, 1) == -1 && errno == EINVAL); /* wrong count */
        CHECK(xengnttab_unmap(xgt, r + 4096, 1) == -1 && errno == EINVAL);
        CHECK(xengnttab_unmap(xgt, r, 2) == 0);
        CHECK(xengnttab_unmap(xgt, r, 2) == -1); /* twice */
        /* A limit set with set_max_grants is enforced (4 pages mapped). */
        CHECK(xengnttab_set_max_grants(xgt, 5) == 0);
        CHECK(!xengnttab_map_domain_grant_refs(xgt, 2, GUEST, (uint32_t *)a->refs, PROT_READ));
        CHECK(errno == ENOMEM);
        r = xengnttab_map_grant_ref(xgt, GUEST, a->single, PROT_READ);
        CHECK(r);
        CHECK(xengnttab_unmap(xgt, r, 1) == 0);

        msg_send(p->to_parent, 3); /* parent: grant_end must be -EBUSY */
        CHECK(msg_recv(p->from_parent) == 4);
        CHECK(xengnttab_unmap(xgt, m, 4) == 0);
        CHECK(xengnttab_close(xgt) == 0);
}

static void crash_mapper(struct peer *p, void *arg)
{
        const struct map_args *a = arg;
        xengnttab_handle *xgt = xengnttab_open(NULL, 0);

        CHECK(xgt);
        CHECK(xengnttab_map_grant_ref(xgt, GUEST, a->single, PROT_READ | PROT_WRITE));
        msg_send(p->to_parent, 1);
        _exit(0); /* dies with the page mapped */
}

static void test_map(void)
{
        struct map_args a;
        uint32_t pfns[4], pfn_ro = new_page(GUEST, 14), pfn_single = new_page(GUEST, 15);
        struct peer p;

        for (int i = 0; i < 4; i++) {
                pfns[i] = new_page(GUEST, 10 + i);
                a.refs[i] = grant(GUEST, 0, pfns[i], false);
        }
        a.ro = grant(GUEST, 0, pfn_ro, true);
        a.other = grant(GUEST, OTHER, pfns[0], false);
        a.single = grant(GUEST, 0, pfn_single, false);

        peer_start(&p, map_backend, &a);
        CHECK(msg_recv(p.from_child) == 1);
        for (int i = 0; i < 4; i++)
                CHECK(same(simxen_page(sx, pfns[i]), SIMXEN_PAGE_SIZE, 20 + i));
        fill(simxen_page(sx, pfns[2]), SIMXEN_PAGE_SIZE, 30);
        msg_send(p.to_child, 2);
        CHECK(msg_recv(p.from_child) == 3);
        CHECK_ERR(simxen_grant_end(sx, GUEST, a.refs[1]), -EBUSY);
        CHECK_ERR(simxen_page_free(sx, GUEST, pfns[1]), -EBUSY);
        CHECK(simxen_grant_end(sx, GUEST, a.single) == 0); /* unmapped already */
        msg_send(p.to_child, 4);
        peer_wait(&p);
        for (int i = 0; i < 4; i++)
                CHECK(simxen_grant_end(sx, GUEST, a.refs[i]) == 0);
        CHECK(simxen_grant_end(sx, GUEST, a.ro) == 0);

        /* A backend that dies with a mapping releases it, as gntdev does. */
        a.single = grant(GUEST, 0, pfn_single, false);
        peer_start(&p, crash_mapper, &a);
        CHECK(msg_recv(p.from_child) == 1);
        peer_wait(&p);
        CHECK(simxen_grant_end(sx, GUEST, a.single) == 0);

        struct simxen_stats st;
        simxen_get_stats(sx, &st);
        CHECK(st.maps == st.unmaps + 1); /* the crashed mapper never unmapped */
        CHECK(st.maps == 4 + 1 + 2 + 1 + 1);
        printf("ok map\n");
}

/* --- event channels ------------------------------------------------------- */

struct evt_args {
        uint32_t port, port2, other_port, rounds;
};

static void evt_backend(struct peer *p, void *arg)
{
        const struct evt_args *a = arg;
        xenevtchn_handle *xce = xenevtchn_open(NULL, 0);
        int fd, lport, lport2;

        CHECK(xce);
        fd = xenevtchn_fd(xce);
        CHECK(fd >= 0);
        /* Blocking like /dev/xen/evtchn until asked otherwise. */
        CHECK(!(fcntl(fd, F_GETFL) & O_NONBLOCK));
        CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
        errno = 0;
        CHECK(xenevtchn_pending(xce) == -1 && errno == EAGAIN);
        /* Only a port allocated for us can be bound. */
        CHECK(xenevtchn_bind_interdomain(xce, GUEST, a->other_port) == -1 && errno == EINVAL);
        CHECK(xenevtchn_bind_interdomain(xce, GUEST, 1000) == -1 && errno == EINVAL);
        CHECK(xenevtchn_bind_interdomain(xce, GUEST, 0) == -1 && errno == EINVAL);
        CHECK(xenevtchn_bind_interdomain(xce, GUEST, 1u << 31) == -1 && errno == EINVAL);
        CHECK(xenevtchn_bind_interdomain(xce, 77, a->port) == -1 && errno == ESRCH);
        CHECK(xenevtchn_notify(xce, 5) == -1);
        CHECK(xenevtchn_notify(xce, 1u << 20) == -1);
        CHECK(xenevtchn_unbind(xce, 5) == -1);

        lport = xenevtchn_bind_interdomain(xce, GUEST, a->port);
        CHECK(lport > 0);
        /* Already connected: a second bind fails. */
        CHECK(xenevtchn_bind_interdomain(xce, GUEST, a->port) == -1 && errno == EINVAL);
        /* Binding marks the new port pending (Xen does so conservatively). */
        CHECK(readable(fd, 5000));
        CHECK(xenevtchn_pending(xce) == lport);
        CHECK(xenevtchn_unmask(xce, lport) == 0);
        CHECK(!readable(fd, 0));
        CHECK(xenevtchn_pending(xce) == -1 && errno == EAGAIN);
        msg_send(p->to_parent, (uint32_t)lport);

        for (uint32_t i = 0; i < a->rounds; i++) {
                CHECK(xenevtchn_notify(xce, lport) == 0);
                CHECK(readable(fd, 5000));
                CHECK(xenevtchn_pending(xce) == lport);
                CHECK(xenevtchn_unmask(xce, lport) == 0);
        }
        /* Notifications coalesce while the guest does not look. */
        for (int i = 0; i < 10; i++)
                CHECK(xenevtchn_notify(xce, lport) == 0);
        /* Two ports on one handle: both delivered, fd stays readable. */
        lport2 = xenevtchn_bind_interdomain(xce, GUEST, a->port2);
        CHECK(lport2 > 0 && lport2 != lport);
        CHECK(xenevtchn_pending(xce) == lport2); /* the bind's own event */
        msg_send(p->to_parent, 5);
        CHECK(msg_recv(p->from_parent) == 6); /* guest notified both */
        int got1 = 0, got2 = 0;
        for (int i = 0; i < 2; i++) {
                CHECK(readable(fd, 5000));
                int port = xenevtchn_pending(xce);
                got1 += port == lport;
                got2 += port == lport2;
        }
        CHECK(got1 == 1 && got2 == 1);
        CHECK(xenevtchn_pending(xce) == -1);
        CHECK(xenevtchn_unbind(xce, lport2) == 0);
        CHECK(xenevtchn_unbind(xce, lport2) == -1);
        CHECK(xenevtchn_notify(xce, lport2) == -1);
        CHECK(xenevtchn_close(xce) == 0);
        msg_send(p->to_parent, 7);
}

static void rebind_backend(struct peer *p, void *arg)
{
        const struct evt_args *a = arg;
        xenevtchn_handle *xce = xenevtchn_open(NULL, 0);
        int lport;

        CHECK(xce);
        lport = xenevtchn_bind_interdomain(xce, GUEST, a->port);
        CHECK(lport > 0);
        CHECK(xenevtchn_pending(xce) == lport);
        CHECK(xenevtchn_notify(xce, lport) == 0);
        msg_send(p->to_parent, 1);
        _exit(0); /* killed without closing: its channel must be reusable */
}

static void test_evtchn(void)
{
        xenevtchn_handle *xe = simxen_evtchn_open_as(sx, GUEST);
        xenevtchn_handle *xo = simxen_evtchn_open_as(sx, OTHER);
        struct evt_args a = {.rounds = 1000};
        struct peer p;
        int fd, lport;

        CHECK(xe && xo);
        CHECK(!simxen_evtchn_open_as(sx, 99) && errno == ESRCH);
        fd = xenevtchn_fd(xe);
        CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
        a.port = (uint32_t)xenevtchn_bind_unbound_port(xe, 0);
        a.port2 = (uint32_t)xenevtchn_bind_unbound_port(xe, 0);
        a.other_port = (uint32_t)xenevtchn_bind_unbound_port(xe, OTHER);
        CHECK((int)a.port > 0 && (int)a.port2 > 0 && (int)a.other_port > 0);
        CHECK(xenevtchn_bind_unbound_port(xe, 99) == -1 && errno == ESRCH);
        /* Unbound: a notify is dropped, not an error. */
        CHECK(xenevtchn_notify(xe, a.port) == 0);
        /* Another domain's handle does not own our ports. */
        CHECK(xenevtchn_notify(xo, a.port) == -1);

        peer_start(&p, evt_backend, &a);
        lport = (int)msg_recv(p.from_child);
        CHECK(lport > 0);
        for (uint32_t i = 0; i < a.rounds; i++) {
                CHECK(readable(fd, 5000));
                CHECK(xenevtchn_pending(xe) == (int)a.port);
                CHECK(xenevtchn_unmask(xe, a.port) == 0);
                CHECK(xenevtchn_notify(xe, a.port) == 0);
        }
        CHECK(msg_recv(p.from_child) == 5);
        CHECK(readable(fd, 5000));
        CHECK(xenevtchn_pending(xe) == (int)a.port);
        CHECK(!readable(fd, 0));
        CHECK(xenevtchn_pending(xe) == -1 && errno == EAGAIN);
        CHECK(xenevtchn_notify(xe, a.port) == 0);
        CHECK(xenevtchn_notify(xe, a.port2) == 0);
        msg_send(p.to_child, 6);
        CHECK(msg_recv(p.from_child) == 7);
        peer_wait(&p);

        /* The backend closed: our port is unbound again, notify is dropped,
         * and a new backend can bind it (restart). */
        CHECK(xenevtchn_notify(xe, a.port) == 0);
        for (int round = 0; round < 3; round++) {
                peer_start(&p, rebind_backend, &a);
                CHECK(msg_recv(p.from_child) == 1);
                peer_wait(&p);
                CHECK(readable(fd, 5000));
                CHECK(xenevtchn_pending(xe) == (int)a.port);
                /* Peer dead: dropped (and its channel closed).  Without this
                 * notify, the next bind_interdomain reaps the dead handle. */
                if (round == 0)
                        CHECK(xenevtchn_notify(xe, a.port) == 0);
        }

        CHECK(xenevtchn_unbind(xe, a.other_port) == 0);
        CHECK(xenevtchn_close(xo) == 0);
        CHECK(xenevtchn_close(xe) == 0);
        CHECK(xenevtchn_close(NULL) == 0);
        CHECK(xenevtchn_notify(NULL, 1) == -1 && xenevtchn_pending(NULL) == -1);
        printf("ok evtchn\n");
}

/* --- domains -------------------------------------------------------------- */

struct dom_args {
        uint32_t domid, gref, gref_mapped;
};

static int getinfo_state(xc_interface *xch, uint32_t domid)
{
        xc_dominfo_t info[4];
        int n = xc_domain_getinfo(xch, domid, 1, info);

        CHECK(n >= 0);
        if (n == 0 || info[0].domid != domid)
                return 0; /* gone */
        return info[0].dying ? 2 : 1;
}

static void dom_backend(struct peer *p, void *arg)
{
        const struct dom_args *a = arg;
        xc_interface *xch = xc_interface_open(NULL, NULL, 0);
        xengnttab_handle *xgt = xengnttab_open(NULL, 0);
        xengnttab_grant_copy_segment_t s;
        xc_dominfo_t info[8];
        xc_domaininfo_t dinfo[8];
        uint8_t buf[64], *m;
        int n;

        CHECK(xch && xgt);
        n = xc_domain_getinfo(xch, 0, 8, info);
        CHECK(n >= 2 && info[0].domid == 0 && !info[0].dying);
        CHECK(getinfo_state(xch, a->domid) == 1);
        n = xc_domain_getinfolist(xch, a->domid, 8, dinfo);
        CHECK(n >= 1 && dinfo[0].domain == a->domid && !(dinfo[0].flags & XEN_DOMINF_dying));
        CHECK(xc_domain_getinfo(xch, 0, 0, info) == 0);
        CHECK(xc_domain_getinfo(xch, 0, 3, NULL) == -1);
        CHECK(xc_domain_getinfo(NULL, 0, 3, info) == -1);
        s = seg_from(a->domid, a->gref, 0, buf, sizeof(buf));
        CHECK(xengnttab_grant_copy(xgt, 1, &s) == 0 && s.status == GNTST_okay);
        m = xengnttab_map_grant_ref(xgt, a->domid, a->gref_mapped, PROT_READ);
        CHECK(m);

        msg_send(p->to_parent, 1);
        CHECK(msg_recv(p->from_parent) == 2); /* destroyed */
        /* Still mapped by us: a dying zombie, grants unusable. */
        CHECK(getinfo_state(xch, a->domid) == 2);
        n = xc_domain_getinfolist(xch, a->domid, 1, dinfo);
        CHECK(n == 1 && (dinfo[0].flags & XEN_DOMINF_dying));
        s = seg_from(a->domid, a->gref, 0, buf, sizeof(buf));
        CHECK(xengnttab_grant_copy(xgt, 1, &s) == 0 && s.status == GNTST_bad_domain);
        CHECK(!xengnttab_map_grant_ref(xgt, a->domid, a->gref, PROT_READ));
        CHECK(xengnttab_unmap(xgt, m, 1) == 0);
        /* Last mapping gone: so is the domain. */
        CHECK(getinfo_state(xch, a->domid) == 0);
        CHECK(xengnttab_grant_copy(xgt, 1, &s) == 0 && s.status == GNTST_bad_domain);
        xengnttab_close(xgt);
        xc_interface_close(xch);
        msg_send(p->to_parent, 3);
}

static void test_domain(void)
{
        const uint32_t domid = 7;
        struct dom_args a = {.domid = domid};
        xenevtchn_handle *xe;
        uint32_t pfn, pfn2;
        struct peer p;
        int port;

        CHECK(simxen_domain_create(sx, domid) == 0);
        CHECK_ERR(simxen_domain_create(sx, domid), -EEXIST);
        CHECK_ERR(simxen_domain_create(sx, 0), -EEXIST);
        CHECK_ERR(simxen_domain_create(sx, 0x7ff0), -EINVAL);
        CHECK_ERR(simxen_domain_destroy(sx, 0), -EPERM);
        CHECK_ERR(simxen_domain_destroy(sx, 555), -ESRCH);
        pfn = new_page(domid, 40);
        pfn2 = new_page(domid, 41);
        a.gref = grant(domid, 0, pfn, false);
        a.gref_mapped = grant(domid, 0, pfn2, false);
        xe = simxen_evtchn_open_as(sx, domid);
        CHECK(xe);
        port = xenevtchn_bind_unbound_port(xe, 0);
        CHECK(port > 0);

        peer_start(&p, dom_backend, &a);
        CHECK(msg_recv(p.from_child) == 1);
        CHECK(simxen_domain_destroy(sx, domid) == 0);
        /* Its channels are closed, its pages and grants unusable. */
        CHECK(xenevtchn_notify(xe, port) == -1);
        CHECK_ERR(simxen_grant_access(sx, domid, 0, pfn, false, &a.gref), -ESRCH);
        CHECK_ERR(simxen_domain_create(sx, domid), -EEXIST); /* zombie */
        msg_send(p.to_child, 2);
        CHECK(msg_recv(p.from_child) == 3);
        peer_wait(&p);
        CHECK(xenevtchn_close(xe) == 0);
        CHECK_ERR(simxen_domain_destroy(sx, domid), -ESRCH);
        CHECK_ERR(simxen_page_free(sx, domid, pfn), -ESRCH);
        /* The id can be reused; its pages went back to the pool. */
        CHECK(simxen_domain_create(sx, domid) == 0);
        CHECK(simxen_domain_destroy(sx, domid) == 0);
        printf("ok domain\n");
}

/* --- argument checking and environment ------------------------------------ */

static void env_backend(struct peer *p, void *arg)
{
        unsetenv("VBD_SIM_DIR");
        errno = 0;
        CHECK(!xengnttab_open(NULL, 0) && errno == ENOENT);
        CHECK(!xenevtchn_open(NULL, 0) && errno == ENOENT);
        CHECK(!xc_interface_open(NULL, NULL, 0) && errno == ENOENT);
        setenv("VBD_SIM_DIR", "/nonexistent/simxen", 1);
        CHECK(!xengnttab_open(NULL, 0) && errno == ENOENT);
        setenv("VBD_SIM_DIR", sim_dir, 1);
        setenv("VBD_SIM_DOMID", "77", 1);
        CHECK(!xengnttab_open(NULL, 0) && errno == ESRCH);
        setenv("VBD_SIM_DOMID", "1x", 1);
        CHECK(!xenevtchn_open(NULL, 0) && errno == EINVAL);
        setenv("VBD_SIM_DOMID", "99999", 1);
        CHECK(!xc_interface_open(NULL, NULL, 0) && errno == EINVAL);
        /* A backend in a driver domain: grants must be made to it. */
        setenv("VBD_SIM_DOMID", "1", 1);
        xengnttab_handle *xgt = xengnttab_open(NULL, 0);
        CHECK(xgt);
        uint8_t buf[16];
        xengnttab_grant_copy_segment_t s = seg_from(OTHER, (uint32_t)(uintptr_t)arg, 0, buf, 16);
        CHECK(xengnttab_grant_copy(xgt, 1, &s) == 0 && s.status == GNTST_okay);
        CHECK(same(buf, sizeof(buf), 50));
        CHECK(xengnttab_fd(xgt) == -1);
        CHECK(xengnttab_close(xgt) == 0);
}

static void test_args(void)
{
        uint32_t pfn, gref, n = 0;
        struct peer p;
        int r;

        CHECK(!simxen_create(NULL, 4) && errno == EINVAL);
        CHECK(!simxen_create(sim_dir, 0) && errno == EINVAL);
        CHECK(!simxen_open("/nonexistent/simxen"));
        CHECK(simxen_page(sx, 1u << 30) == NULL);
        CHECK(simxen_page(NULL, 0) == NULL);
        CHECK_ERR(simxen_page_alloc(sx, 99, &pfn), -ESRCH);
        CHECK_ERR(simxen_page_free(sx, GUEST, 1u << 30), -EINVAL);
        pfn = new_page(OTHER, 50);
        CHECK_ERR(simxen_page_free(sx, GUEST, pfn), -EINVAL); /* not its page */
        CHECK_ERR(simxen_grant_access(sx, GUEST, 0, pfn, false, &gref), -EPERM);
        CHECK_ERR(simxen_grant_access(sx, OTHER, 0, 1u << 30, false, &gref), -EPERM);
        CHECK_ERR(simxen_grant_access(sx, OTHER, 0x7ff0, pfn, false, &gref), -EINVAL);
        CHECK_ERR(simxen_grant_access(sx, 99, 0, pfn, false, &gref), -ESRCH);
        CHECK_ERR(simxen_grant_end(sx, OTHER, 1u << 30), -EINVAL);
        gref = grant(OTHER, GUEST, pfn, false);
        CHECK(simxen_grant_end(sx, OTHER, gref) == 0);

        /* Backend domain 1 copies a grant made to it. */
        gref = grant(OTHER, GUEST, pfn, true);
        peer_start(&p, env_backend, (void *)(uintptr_t)gref);
        peer_wait(&p);

        /* Grant table exhaustion is clean. */
        while ((r = simxen_grant_access(sx, OTHER, 0, pfn, false, &gref)) == 0)
                n++;
        CHECK(r == -ENOSPC);
        CHECK(n == 4096 - 8 - 1);
        CHECK_ERR(simxen_page_free(sx, OTHER, pfn), -EBUSY);
        CHECK(simxen_domain_destroy(sx, OTHER) == 0);
        CHECK(simxen_domain_create(sx, OTHER) == 0);
        /* Page pool exhaustion is clean, and destroy gives pages back. */
        CHECK(simxen_domain_create(sx, 9) == 0);
        n = 0;
        while ((r = simxen_page_alloc(sx, 9, &pfn)) == 0)
                n++;
        CHECK(r == -ENOMEM && n > 0);
        CHECK(simxen_domain_destroy(sx, 9) == 0);
        CHECK(simxen_domain_create(sx, 9) == 0);
        CHECK(simxen_page_alloc(sx, 9, &pfn) == 0);
        CHECK(simxen_domain_destroy(sx, 9) == 0);
        printf("ok args\n");
}

/* --- benchmark (printed, not asserted) ------------------------------------ */

struct bench_args {
        uint32_t grefs[11];
        uint32_t port;
};

static void bench_backend(struct peer *p, void *arg)
{
        const struct bench_args *a = arg;
        xengnttab_handle *xgt = xengnttab_open(NULL, 0);
        xenevtchn_handle *xce = xenevtchn_open(NULL, 0);
        static uint8_t buf[11][SIMXEN_PAGE_SIZE];
        xengnttab_grant_copy_segment_t s[11];
        const int iters = 200000;
        double t;
        int lport;

        CHECK(xgt && xce);
        for (int i = 0; i < 11; i++)
                s[i] = seg_from(GUEST, a->grefs[i], 0, buf[i], 512);
        t = vbd_now_ns() / 1e9;
        for (int i = 0; i < iters; i++)
                CHECK(xengnttab_grant_copy(xgt, 1, s) == 0);
        t = vbd_now_ns() / 1e9 - t;
        printf("bench: grant_copy 1 x 512 B:    %.0f calls/s\n", iters / t);
        for (int i = 0; i < 11; i++)
                s[i] = seg_from(GUEST, a->grefs[i], 0, buf[i], SIMXEN_PAGE_SIZE);
        t = vbd_now_ns() / 1e9;
        for (int i = 0; i < iters / 10; i++)
                CHECK(xengnttab_grant_copy(xgt, 11, s) == 0);
        t = vbd_now_ns() / 1e9 - t;
        printf("bench: grant_copy 11 x 4 KiB:   %.0f calls/s, %.2f GB/s\n", iters / 10 / t,
               iters / 10 * 11 * 4096.0 / t / 1e9);
        lport = xenevtchn_bind_interdomain(xce, GUEST, a->port);
        CHECK(lport > 0);
        CHECK(xenevtchn_pending(xce) == lport);
        t = vbd_now_ns() / 1e9;
        for (int i = 0; i < iters; i++)
                CHECK(xenevtchn_notify(xce, lport) == 0);
        t = vbd_now_ns() / 1e9 - t;
        printf("bench: notify (coalesced):      %.0f calls/s\n", iters / t);
        msg_send(p->to_parent, 1);
        t = vbd_now_ns() / 1e9;
        for (int i = 0; i < 20000; i++) {
                CHECK(readable(xenevtchn_fd(xce), 5000));
                CHECK(xenevtchn_pending(xce) == lport);
                CHECK(xenevtchn_notify(xce, lport) == 0);
        }
        t = vbd_now_ns() / 1e9 - t;
        printf("bench: evtchn ping-pong:        %.1f us round trip\n", t / 20000 * 1e6);
        xenevtchn_close(xce);
        xengnttab_close(xgt);
}

static void bench(void)
{
        xenevtchn_handle *xe = simxen_evtchn_open_as(sx, GUEST);
        struct bench_args a;
        struct peer p;

        CHECK(xe);
        for (int i = 0; i < 11; i++)
                a.grefs[i] = grant(GUEST, 0, new_page(GUEST, 60 + i), false);
        a.port = (uint32_t)xenevtchn_bind_unbound_port(xe, 0);
        peer_start(&p, bench_backend, &a);
        CHECK(msg_recv(p.from_child) == 1);
        (void)xenevtchn_pending(xe);
        CHECK(xenevtchn_notify(xe, a.port) == 0);
        for (int i = 0; i < 20000; i++) {
                CHECK(readable(xenevtchn_fd(xe), 5000));
                CHECK(xenevtchn_pending(xe) == (int)a.port);
                if (i < 19999)
                        CHECK(xenevtchn_notify(xe, a.port) == 0);
        }
        peer_wait(&p);
        xenevtchn_close(xe);
}

int main(int argc, char **argv)
{
        const char *tmp = getenv("TMPDIR");
        char path[300];

        setvbuf(stdout, NULL, _IOLBF, 0);
        signal(SIGPIPE, SIG_IGN);
        check_fatal = true;
        check_context = check_where;
        snprintf(sim_dir, sizeof(sim_dir), "%s/xensim-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        CHECK(mkdtemp(sim_dir));
        sx = simxen_create(sim_dir, 256);
        CHECK(sx);
        CHECK(simxen_domain_create(sx, GUEST) == 0);
        CHECK(simxen_domain_create(sx, OTHER) == 0);

        test_copy();
        test_map();
        test_evtchn();
        test_domain();
        test_args();
        if (argc > 1 && strcmp(argv[1], "bench") == 0)
                bench();

        simxen_close(sx);
        snprintf(path, sizeof(path), "%s/xen.shm", sim_dir);
        unlink(path);
        rmdir(sim_dir);
        return 0;
}
