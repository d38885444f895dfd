/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The simulated xenstore server driven by the real libxenstore (and by a raw
 * socket for what libxenstore would never send).
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xenstore.h>
#include <xen/io/xs_wire.h>

#include "check.h"
#include "simxs.h"

/* The calls set errno; a failed check shows it. */
static void check_errno(int err)
{
        fprintf(stderr, "  errno %d (%s)\n", err, strerror(err));
}

static char sock_path[108];

static struct xs_handle *open_conn(unsigned domid)
{
        struct xs_handle *h = xs_open(0);
        char id[16];

        if (!h) {
                fprintf(stderr, "xs_open: %s\n", strerror(errno));
                exit(1);
        }
        if (domid) {
                snprintf(id, sizeof(id), "%u", domid);
                char *r = xs_control_command(h, "sim-domid", id, strlen(id) + 1);

                if (!r) {
                        fprintf(stderr, "sim-domid: %s\n", strerror(errno));
                        exit(1);
                }
                free(r);
        }
        return h;
}

/* Value of path as a C string, or NULL (errno). */
static char *rd(struct xs_handle *h, xs_transaction_t t, const char *path)
{
        unsigned len;

        return xs_read(h, t, path, &len);
}

static bool rd_is(struct xs_handle *h, xs_transaction_t t, const char *path, const char *want)
{
        char *v = rd(h, t, path);
        bool ok = v && strcmp(v, want) == 0;

        if (!ok)
                fprintf(stderr, "read %s: got %s, want %s\n", path, v ? v : "(error)", want);
        free(v);
        return ok;
}

static bool wr(struct xs_handle *h, xs_transaction_t t, const char *path, const char *v)
{
        return xs_write(h, t, path, v, strlen(v));
}

static bool read_fails(struct xs_handle *h, const char *path)
{
        char *v = rd(h, XBT_NULL, path);

        free(v);
        return v == NULL;
}

static bool read_fails_tx(struct xs_handle *h, xs_transaction_t t, const char *path)
{
        char *v = rd(h, t, path);

        free(v);
        return v == NULL;
}

static bool set_perms(struct xs_handle *h, const char *path, const char *spec)
{
        struct xs_permissions p[8];
        unsigned n = 0;
        char buf[64], *save, *tok;

        snprintf(buf, sizeof(buf), "%s", spec);
        for (tok = strtok_r(buf, " ", &save); tok && n < 8; tok = strtok_r(NULL, " ", &save)) {
                p[n].id = (unsigned)atoi(tok + 1);
                p[n].perms = tok[0] == 'r'   ? XS_PERM_READ
                             : tok[0] == 'w' ? XS_PERM_WRITE
                             : tok[0] == 'b' ? XS_PERM_READ | XS_PERM_WRITE
                                             : XS_PERM_NONE;
                n++;
        }
        return xs_set_permissions(h, XBT_NULL, path, p, n);
}

/* Wait up to ms for the next watch event; true if it is (path, token). */
static bool next_event(struct xs_handle *h, const char *path, const char *token, int ms)
{
        struct pollfd pfd = {.fd = xs_fileno(h), .events = POLLIN};
        unsigned num;
        char **ev;
        bool ok;

        ev = xs_check_watch(h);
        if (!ev) {
                if (poll(&pfd, 1, ms) <= 0) {
                        fprintf(stderr, "no watch event, wanted %s %s\n", path, token);
                        return false;
                }
                ev = xs_read_watch(h, &num);
                if (!ev)
                        return false;
        }
        ok = strcmp(ev[XS_WATCH_PATH], path) == 0 && strcmp(ev[XS_WATCH_TOKEN], token) == 0;
        if (!ok)
                fprintf(stderr, "watch event %s %s, wanted %s %s\n", ev[XS_WATCH_PATH],
                        ev[XS_WATCH_TOKEN], path, token);
        free(ev);
        return ok;
}

static bool no_event(struct xs_handle *h, int ms)
{
        struct pollfd pfd = {.fd = xs_fileno(h), .events = POLLIN};
        char **ev = xs_check_watch(h);

        if (!ev && poll(&pfd, 1, ms) > 0)
                ev = xs_check_watch(h);
        if (ev) {
                fprintf(stderr, "unexpected watch event %s %s\n", ev[0], ev[1]);
                free(ev);
                return false;
        }
        return true;
}

static void test_basic(void)
{
        struct xs_handle *h = open_conn(0);
        unsigned num, len;
        char **dir;
        char *v;

        CHECK(wr(h, XBT_NULL, "/a/b/c", "hello"));
        v = xs_read(h, XBT_NULL, "/a/b/c", &len);
        CHECK(v && len == 5 && memcmp(v, "hello", 5) == 0);
        free(v);
        v = xs_read(h, XBT_NULL, "/a", &len); /* created parent: empty value */
        CHECK(v && len == 0);
        free(v);
        /* Values are bytes, nul included. */
        CHECK(xs_write(h, XBT_NULL, "/a/bin", "x\0y", 3));
        v = xs_read(h, XBT_NULL, "/a/bin", &len);
        CHECK(v && len == 3 && memcmp(v, "x\0y", 3) == 0);
        free(v);

        CHECK(xs_mkdir(h, XBT_NULL, "/a/d"));
        CHECK(xs_mkdir(h, XBT_NULL, "/a/d")); /* exists: fine */
        CHECK(wr(h, XBT_NULL, "/a/d/k", "v"));
        dir = xs_directory(h, XBT_NULL, "/a", &num);
        CHECK(dir && num == 3 && strcmp(dir[0], "b") == 0 && strcmp(dir[1], "bin") == 0 &&
              strcmp(dir[2], "d") == 0);
        free(dir);
        dir = xs_directory(h, XBT_NULL, "/a/b/c", &num);
        CHECK(dir && num == 0);
        free(dir);
        CHECK_ERRNO(xs_directory(h, XBT_NULL, "/nope", &num) != NULL, ENOENT);

        CHECK(xs_rm(h, XBT_NULL, "/a/b"));
        CHECK_ERRNO(rd(h, XBT_NULL, "/a/b/c") != NULL, ENOENT);
        CHECK_ERRNO(rd(h, XBT_NULL, "/a/b") != NULL, ENOENT);
        CHECK(rd_is(h, XBT_NULL, "/a/d/k", "v"));
        CHECK(xs_rm(h, XBT_NULL, "/a/zzz"));                /* parent exists: fine */
        CHECK_ERRNO(xs_rm(h, XBT_NULL, "/nope/x"), ENOENT); /* parent missing */
        CHECK_ERRNO(xs_rm(h, XBT_NULL, "/"), EINVAL);

        /* Path syntax. */
        CHECK_ERRNO(wr(h, XBT_NULL, "/a//b", "x"), EINVAL);
        CHECK_ERRNO(wr(h, XBT_NULL, "/a/", "x"), EINVAL);
        CHECK_ERRNO(wr(h, XBT_NULL, "/a b", "x"), EINVAL);
        CHECK_ERRNO(wr(h, XBT_NULL, "/a.b", "x"), EINVAL);
        CHECK_ERRNO(wr(h, XBT_NULL, "@releaseDomain", "x"), EINVAL);
        CHECK_ERRNO(rd(h, XBT_NULL, "") != NULL, EINVAL);
        {
                char longp[XENSTORE_ABS_PATH_MAX + 2];

                memset(longp, 'x', sizeof(longp));
                longp[0] = '/';
                longp[sizeof(longp) - 1] = '\0';
                CHECK_ERRNO(wr(h, XBT_NULL, longp, "x"), EINVAL);
                longp[XENSTORE_ABS_PATH_MAX] = '\0'; /* exactly at the limit */
                CHECK(wr(h, XBT_NULL, longp, "x"));
                CHECK(xs_rm(h, XBT_NULL, longp));
        }
        CHECK(wr(h, XBT_NULL, "/ok/A-Z_a@9", "x"));

        /* Relative paths resolve under the connection's domain. */
        CHECK(wr(h, XBT_NULL, "rel/x", "r"));
        CHECK(rd_is(h, XBT_NULL, "/local/domain/0/rel/x", "r"));
        v = xs_get_domain_path(h, 7);
        CHECK(v && strcmp(v, "/local/domain/7") == 0);
        free(v);
        CHECK(xs_is_domain_introduced(h, 0));

        /* A directory longer than a payload comes back via DIRECTORY_PART. */
        for (unsigned i = 0; i < 300; i++) {
                char p[96];

                snprintf(p, sizeof(p), "/big/child-with-a-long-name-%04u", i);
                CHECK(wr(h, XBT_NULL, p, "x"));
        }
        dir = xs_directory(h, XBT_NULL, "/big", &num);
        CHECK(dir && num == 300);
        if (dir && num == 300)
                CHECK(strcmp(dir[0], "child-with-a-long-name-0000") == 0 &&
                      strcmp(dir[299], "child-with-a-long-name-0299") == 0);
        free(dir);
        CHECK(xs_rm(h, XBT_NULL, "/big"));

        /* Unknown control command. */
        CHECK_ERRNO(xs_control_command(h, "no-such-command", "", 0) != NULL, EINVAL);
        xs_close(h);
}

static void test_perms(void)
{
        struct xs_handle *h0 = open_conn(0), *h5 = open_conn(5);
        struct xs_permissions *p;
        unsigned num;
        char big[SIMXS_VALUE_MAX_DOMU + 1];
        char *r;
        int i;

        CHECK(wr(h0, XBT_NULL, "/p/secret", "s")); /* inherits the root's "n0" */
        CHECK_ERRNO(read_fails(h5, "/p/secret") == false, EACCES);
        CHECK_ERRNO(read_fails(h5, "/p/nothing") == false, EACCES); /* parent unreadable */
        CHECK_ERRNO(wr(h5, XBT_NULL, "/p/secret", "x"), EACCES);
        CHECK_ERRNO(wr(h5, XBT_NULL, "/p/new", "x"), EACCES); /* parent not writable */
        CHECK_ERRNO(xs_rm(h5, XBT_NULL, "/p/secret"), EACCES);
        CHECK_ERRNO(xs_get_permissions(h5, XBT_NULL, "/p/secret", &num) != NULL, EACCES);

        CHECK(set_perms(h0, "/p/secret", "n0 r5"));
        CHECK(rd_is(h5, XBT_NULL, "/p/secret", "s"));
        CHECK_ERRNO(wr(h5, XBT_NULL, "/p/secret", "x"), EACCES);
        CHECK(read_fails(h5, "/p/secret/sub") && errno == ENOENT); /* readable parent */
        p = xs_get_permissions(h5, XBT_NULL, "/p/secret", &num);
        CHECK(p && num == 2 && p[0].id == 0 && p[0].perms == XS_PERM_NONE && p[1].id == 5 &&
              p[1].perms == XS_PERM_READ);
        free(p);
        /* Not the owner: no set_perms. */
        CHECK_ERRNO(set_perms(h5, "/p/secret", "n0 b5"), EACCES);
        /* Write access is not ownership. */
        CHECK(set_perms(h0, "/p/secret", "n0 b5"));
        CHECK(wr(h5, XBT_NULL, "/p/secret", "s"));
        CHECK_ERRNO(set_perms(h5, "/p/secret", "n0 b5 r6"), EACCES);
        CHECK(set_perms(h0, "/p/secret", "r0")); /* default read for everyone */
        CHECK(rd_is(h5, XBT_NULL, "/p/secret", "s"));

        /* A home owned by domain 5: its nodes are its own. */
        CHECK(xs_mkdir(h0, XBT_NULL, "/p/home"));
        CHECK(set_perms(h0, "/p/home", "n5"));
        CHECK(wr(h5, XBT_NULL, "/p/home/x", "mine"));
        CHECK(rd_is(h0, XBT_NULL, "/p/home/x", "mine"));
        CHECK(wr(h5, XBT_NULL, "/p/home/deep/er", "v"));
        p = xs_get_permissions(h5, XBT_NULL, "/p/home/deep/er", &num);
        CHECK(p && num == 1 && p[0].id == 5 && p[0].perms == XS_PERM_NONE);
        free(p);
        CHECK(set_perms(h5, "/p/home/x", "n5 r7"));
        CHECK_ERRNO(set_perms(h5, "/p/home/x", "n0"), EPERM); /* no giving away */
        /* Created by a guest under dom0's node with write access: owner is the guest. */
        CHECK(xs_mkdir(h0, XBT_NULL, "/p/shared"));
        CHECK(set_perms(h0, "/p/shared", "n0 w5"));
        CHECK(wr(h5, XBT_NULL, "/p/shared/g", "v"));
        p = xs_get_permissions(h0, XBT_NULL, "/p/shared/g", &num);
        CHECK(p && num == 2 && p[0].id == 5 && p[1].id == 5 && p[1].perms == XS_PERM_WRITE);
        free(p);
        CHECK_ERRNO(read_fails(h5, "/p/shared") == false, EACCES);

        /* Relative paths of a guest are under its home. */
        CHECK(xs_mkdir(h0, XBT_NULL, "/local/domain/5"));
        CHECK(set_perms(h0, "/local/domain/5", "n5"));
        CHECK(wr(h5, XBT_NULL, "data/x", "rel"));
        CHECK(rd_is(h0, XBT_NULL, "/local/domain/5/data/x", "rel"));
        CHECK(xs_is_domain_introduced(h0, 5));

        /* Quotas. */
        memset(big, 'v', sizeof(big));
        CHECK_ERRNO(xs_write(h5, XBT_NULL, "data/big", big, sizeof(big)), ENOSPC);
        CHECK(xs_write(h5, XBT_NULL, "data/big", big, sizeof(big) - 1));
        for (i = 0; i < SIMXS_NODES_PER_DOMAIN + 10; i++) {
                char path[64];

                snprintf(path, sizeof(path), "data/q/%d", i);
                if (!wr(h5, XBT_NULL, path, "x"))
                        break;
        }
        CHECK(i < SIMXS_NODES_PER_DOMAIN && errno == ENOSPC);
        CHECK(xs_rm(h5, XBT_NULL, "data/q"));
        CHECK(wr(h5, XBT_NULL, "data/q/again", "x")); /* quota given back */
        CHECK(wr(h0, XBT_NULL, "/p/dom0-unlimited", "x"));

        /* Only domain 0 may use the simulation controls. */
        r = xs_control_command(h5, "sim-domid", "6", 2);
        CHECK(r == NULL && errno == EACCES);
        r = xs_control_command(h5, "sim-release-domain", "6", 2);
        CHECK(r == NULL && errno == EACCES);
        CHECK_ERRNO(xs_release_domain(h5, 6), EACCES);
        r = xs_control_command(h0, "sim-domid", "0", 2);
        CHECK(r == NULL && errno == EINVAL);

        CHECK(xs_rm(h0, XBT_NULL, "/p"));
        xs_close(h5);
        xs_close(h0);
}

static void test_watches(void)
{
        struct xs_handle *h = open_conn(0), *w = open_conn(0), *g;
        char *r;

        CHECK(xs_watch(w, "/w", "tok"));
        CHECK(next_event(w, "/w", "tok", 2000)); /* fires on registration */
        CHECK(wr(h, XBT_NULL, "/w/x/y", "1"));
        CHECK(next_event(w, "/w/x/y", "tok", 2000));
        CHECK(xs_watch(w, "/w/x/y", "deep"));
        CHECK(next_event(w, "/w/x/y", "deep", 2000));
        CHECK_ERRNO(xs_watch(w, "/w/x/y", "deep"), EEXIST);
        CHECK(xs_mkdir(h, XBT_NULL, "/w/m"));
        CHECK(next_event(w, "/w/m", "tok", 2000));
        CHECK(xs_mkdir(h, XBT_NULL, "/w/m")); /* no change: no event */
        CHECK(wr(h, XBT_NULL, "/unrelated", "1"));
        CHECK(no_event(w, 200));
        /* rm fires on the removed node's ancestors and on watches below it. */
        CHECK(xs_rm(h, XBT_NULL, "/w/x"));
        {
                bool got_tok = false, got_deep = false;

                for (int i = 0; i < 2; i++) {
                        struct pollfd pfd = {.fd = xs_fileno(w), .events = POLLIN};
                        unsigned num;
                        char **ev = xs_check_watch(w);

                        if (!ev && poll(&pfd, 1, 2000) > 0)
                                ev = xs_read_watch(w, &num);
                        if (!ev)
                                break;
                        if (!strcmp(ev[0], "/w/x") && !strcmp(ev[1], "tok"))
                                got_tok = true;
                        if (!strcmp(ev[0], "/w/x/y") && !strcmp(ev[1], "deep"))
                                got_deep = true;
                        free(ev);
                }
                CHECK(got_tok && got_deep);
        }
        CHECK(no_event(w, 200));
        CHECK(xs_unwatch(w, "/w", "tok"));
        CHECK_ERRNO(xs_unwatch(w, "/w", "tok"), ENOENT);
        CHECK(wr(h, XBT_NULL, "/w/after", "1"));
        CHECK(no_event(w, 300));
        CHECK(xs_unwatch(w, "/w/x/y", "deep"));

        /* Watches on "/" see everything, set_perms included. */
        CHECK(xs_watch(w, "/", "root"));
        CHECK(next_event(w, "/", "root", 2000));
        CHECK(set_perms(h, "/w/after", "n0 r3"));
        CHECK(next_event(w, "/w/after", "root", 2000));
        CHECK(xs_unwatch(w, "/", "root"));

        /* A guest only hears of nodes it may read; relative watches give relative paths. */
        CHECK(xs_mkdir(h, XBT_NULL, "/local/domain/9"));
        CHECK(set_perms(h, "/local/domain/9", "n9"));
        CHECK(xs_watch(w, "@introduceDomain", "intro"));
        CHECK(next_event(w, "@introduceDomain", "intro", 2000));
        g = open_conn(9);
        CHECK(next_event(w, "@introduceDomain", "intro", 2000));
        CHECK(xs_unwatch(w, "@introduceDomain", "intro"));
        CHECK(xs_watch(g, "/w", "g"));
        CHECK(next_event(g, "/w", "g", 2000));
        CHECK(wr(h, XBT_NULL, "/w/hidden", "1")); /* n0: not for domain 9 */
        CHECK(no_event(g, 300));
        CHECK(xs_mkdir(h, XBT_NULL, "/w/vis"));
        CHECK(set_perms(h, "/w/vis", "n0 r9"));
        CHECK(next_event(g, "/w/vis", "g", 2000));
        CHECK(xs_watch(g, "dev", "rel"));
        CHECK(next_event(g, "dev", "rel", 2000));
        CHECK(wr(h, XBT_NULL, "/local/domain/9/dev/vbd/1", "x"));
        CHECK(next_event(g, "dev/vbd/1", "rel", 2000));

        /* Watch quota of a guest. */
        {
                int i;

                for (i = 0; i < SIMXS_WATCHES_DOMU + 5; i++) {
                        char tok[16];

                        snprintf(tok, sizeof(tok), "q%d", i);
                        if (!xs_watch(g, "/q", tok))
                                break;
                }
                CHECK(i == SIMXS_WATCHES_DOMU - 2 && errno == E2BIG);
        }

        /* @releaseDomain */
        CHECK(xs_watch(w, "@releaseDomain", "rel"));
        CHECK(next_event(w, "@releaseDomain", "rel", 2000));
        CHECK(xs_is_domain_introduced(h, 9));
        r = xs_control_command(h, "sim-release-domain", "9", 2);
        CHECK(r != NULL);
        free(r);
        CHECK(next_event(w, "@releaseDomain", "rel", 2000));
        CHECK(!xs_is_domain_introduced(h, 9));
        CHECK(xs_release_domain(h, 9)); /* XS_RELEASE from dom0 fires it too */
        CHECK(next_event(w, "@releaseDomain", "rel", 2000));
        CHECK_ERRNO(xs_watch(w, "@bogus", "x"), EINVAL);

        CHECK(xs_rm(h, XBT_NULL, "/w"));
        CHECK(xs_rm(h, XBT_NULL, "/local/domain/9"));
        xs_close(g);
        xs_close(w);
        xs_close(h);
}

static void test_transactions(void)
{
        struct xs_handle *h = open_conn(0), *o = open_conn(0), *w = open_conn(0);
        xs_transaction_t t;

        CHECK(wr(h, XBT_NULL, "/tx/a", "1"));
        CHECK(xs_watch(w, "/tx", "t"));
        CHECK(next_event(w, "/tx", "t", 2000));

        /* Commit: invisible until the end, then there, with watches. */
        t = xs_transaction_start(h);
        CHECK(t != XBT_NULL);
        CHECK(wr(h, t, "/tx/new/leaf", "n"));
        CHECK(rd_is(h, t, "/tx/new/leaf", "n"));
        CHECK(read_fails(h, "/tx/new/leaf") && errno == ENOENT);
        CHECK(no_event(w, 200));
        CHECK(xs_transaction_end(h, t, false));
        CHECK(rd_is(o, XBT_NULL, "/tx/new/leaf", "n"));
        CHECK(next_event(w, "/tx/new", "t", 2000));
        CHECK(next_event(w, "/tx/new/leaf", "t", 2000));

        /* Abort. */
        t = xs_transaction_start(h);
        CHECK(wr(h, t, "/tx/aborted", "x"));
        CHECK(xs_rm(h, t, "/tx/a"));
        CHECK(xs_transaction_end(h, t, true));
        CHECK(read_fails(h, "/tx/aborted"));
        CHECK(rd_is(h, XBT_NULL, "/tx/a", "1"));
        CHECK_ERRNO(wr(h, t, "/tx/late", "x"), ENOENT); /* ended */
        CHECK(no_event(w, 200));

        /* Conflict: a node the transaction read changed meanwhile. */
        t = xs_transaction_start(h);
        CHECK(rd_is(h, t, "/tx/a", "1"));
        CHECK(wr(o, XBT_NULL, "/tx/a", "2"));
        CHECK(wr(h, t, "/tx/b", "from-tx"));
        CHECK(next_event(w, "/tx/a", "t", 2000));
        CHECK_ERRNO(xs_transaction_end(h, t, false), EAGAIN);
        CHECK(read_fails(h, "/tx/b"));
        CHECK(rd_is(h, XBT_NULL, "/tx/a", "2"));
        CHECK(no_event(w, 200));

        /* Conflict on creation: both create the same node. */
        t = xs_transaction_start(h);
        CHECK(wr(h, t, "/tx/c", "tx"));
        CHECK(wr(o, XBT_NULL, "/tx/c", "other"));
        CHECK(next_event(w, "/tx/c", "t", 2000));
        CHECK_ERRNO(xs_transaction_end(h, t, false), EAGAIN);
        CHECK(rd_is(h, XBT_NULL, "/tx/c", "other"));

        /* Conflict: a node the transaction found missing was created meanwhile. */
        CHECK(xs_mkdir(h, XBT_NULL, "/txo"));
        t = xs_transaction_start(h);
        CHECK(read_fails_tx(h, t, "/tx/absent") && errno == ENOENT);
        CHECK(wr(o, XBT_NULL, "/tx/absent", "now"));
        CHECK(next_event(w, "/tx/absent", "t", 2000));
        CHECK(wr(h, t, "/txo/d", "x"));
        CHECK_ERRNO(xs_transaction_end(h, t, false), EAGAIN);
        CHECK(read_fails(h, "/txo/d"));
        CHECK(xs_rm(h, XBT_NULL, "/txo"));

        /* No conflict: unrelated nodes changed meanwhile; rm in a transaction. */
        CHECK(wr(h, XBT_NULL, "/tx/sub/x", "1"));
        CHECK(next_event(w, "/tx/sub/x", "t", 2000));
        t = xs_transaction_start(h);
        CHECK(rd_is(h, t, "/tx/a", "2"));
        CHECK(xs_rm(h, t, "/tx/sub"));
        CHECK(wr(o, XBT_NULL, "/elsewhere", "1"));
        CHECK(rd_is(h, XBT_NULL, "/tx/sub/x", "1"));
        CHECK(xs_transaction_end(h, t, false));
        CHECK(read_fails(h, "/tx/sub"));
        CHECK(next_event(w, "/tx/sub", "t", 2000));

        /* Transaction quota of a guest. */
        {
                struct xs_handle *g = open_conn(4);
                xs_transaction_t ts[SIMXS_TX_DOMU];

                for (int i = 0; i < SIMXS_TX_DOMU; i++) {
                        ts[i] = xs_transaction_start(g);
                        CHECK(ts[i] != XBT_NULL);
                }
                errno = 0;
                CHECK(xs_transaction_start(g) == XBT_NULL && errno == ENOSPC);
                CHECK(xs_transaction_end(g, ts[0], true));
                t = xs_transaction_start(g);
                CHECK(t != XBT_NULL);
                /* Another connection cannot use this connection's transaction. */
                CHECK_ERRNO(wr(h, t, "/tx/steal", "x"), ENOENT);
                xs_close(g);
        }

        CHECK(xs_rm(h, XBT_NULL, "/tx"));
        xs_close(w);
        xs_close(o);
        xs_close(h);
}

static int raw_connect(void)
{
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);

        snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                perror("raw connect");
                exit(1);
        }
        return fd;
}

static bool raw_send(int fd, uint32_t type, uint32_t req_id, const void *p, uint32_t len)
{
        struct xsd_sockmsg h = {.type = type, .req_id = req_id, .len = len};

        return write(fd, &h, sizeof(h)) == sizeof(h) && (!len || write(fd, p, len) == len);
}

static bool read_full(int fd, void *buf, size_t len)
{
        struct pollfd pfd = {.fd = fd, .events = POLLIN};

        while (len) {
                ssize_t n;

                if (poll(&pfd, 1, 3000) <= 0)
                        return false;
                n = read(fd, buf, len);
                if (n <= 0)
                        return false;
                buf = (char *)buf + n;
                len -= (size_t)n;
        }
        return true;
}

/* Read one reply; its payload (nul-terminated) into body. */
static bool raw_reply(int fd, struct xsd_sockmsg *h, char *body, size_t size)
{
        if (!read_full(fd, h, sizeof(*h)) || h->len >= size || !read_full(fd, body, h->len))
                return false;
        body[h->len] = '\0';
        return true;
}

/* True if the peer closes within the time (after any pending data). */
static bool raw_sees_eof(int fd, int ms)
{
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        char buf[65536];

        while (poll(&pfd, 1, ms) > 0) {
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n == 0 || (n < 0 && errno == ECONNRESET))
                        return true;
                if (n < 0)
                        return false;
        }
        return false;
}

static void test_hostile(void)
{
        struct xs_handle *h = open_conn(0);
        struct xsd_sockmsg rh;
        char body[8192];
        int fd;

        CHECK(wr(h, XBT_NULL, "/hostile/ok", "fine"));

        /* Unknown type and malformed payloads: error replies, connection stays. */
        fd = raw_connect();
        CHECK(raw_send(fd, 999, 11, "x", 2));
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR && rh.req_id == 11 &&
              strcmp(body, "EINVAL") == 0);
        CHECK(raw_send(fd, XS_READ, 12, "/hostile/ok", 11)); /* no nul */
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR && rh.req_id == 12 &&
              strcmp(body, "EINVAL") == 0);
        CHECK(raw_send(fd, XS_WATCH, 13, "/a\0", 3)); /* token missing */
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR &&
              strcmp(body, "EINVAL") == 0);
        CHECK(raw_send(fd, XS_READ, 14, "/hostile/ok\0", 12));
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_READ && rh.req_id == 14 &&
              rh.len == 4 && memcmp(body, "fine", 4) == 0);
        CHECK(raw_send(fd, XS_SET_PERMS, 20, "/hostile/ok\0z5\0", 15)); /* bad mode */
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR &&
              strcmp(body, "EINVAL") == 0);
        CHECK(raw_send(fd, XS_SET_PERMS, 21, "/hostile/ok\0r99999\0", 19)); /* bad domid */
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR &&
              strcmp(body, "EINVAL") == 0);
        CHECK(raw_send(fd, XS_SET_PERMS, 22, "/hostile/ok\0", 12)); /* no perms */
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR &&
              strcmp(body, "EINVAL") == 0);
        CHECK(raw_send(fd, XS_DIRECTORY_PART, 23,
                       "/hostile\0"
                       "1\0",
                       11)); /* mid-name */
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR &&
              strcmp(body, "EINVAL") == 0);
        CHECK(raw_send(fd, XS_DIRECTORY_PART, 24,
                       "/hostile\0"
                       "0\0",
                       11));
        CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_DIRECTORY_PART &&
              rh.len == strlen(body) + 1 + 4 && memcmp(body + strlen(body) + 1, "ok\0\0", 4) == 0);
        /* Replies echo the transaction id. */
        {
                struct xsd_sockmsg m = {.type = XS_READ, .req_id = 15, .tx_id = 777, .len = 12};

                CHECK(write(fd, &m, sizeof(m)) == sizeof(m) && write(fd, "/hostile/ok", 12) == 12);
                CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR &&
                      rh.req_id == 15 && rh.tx_id == 777 && strcmp(body, "ENOENT") == 0);
        }

        /* Oversized payload: E2BIG, then that client is disconnected. */
        {
                struct xsd_sockmsg m = {
                    .type = XS_WRITE, .req_id = 16, .len = XENSTORE_PAYLOAD_MAX + 1};

                CHECK(write(fd, &m, sizeof(m)) == sizeof(m));
                CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_ERROR &&
                      rh.req_id == 16 && strcmp(body, "E2BIG") == 0);
                CHECK(raw_sees_eof(fd, 3000));
        }
        close(fd);
        CHECK(rd_is(h, XBT_NULL, "/hostile/ok", "fine"));

        /* A client that never reads its watch events is disconnected, others go on. */
        fd = raw_connect();
        {
                char msg[XENSTORE_PAYLOAD_MAX];
                char token[3000];
                size_t len;

                memset(token, 't', sizeof(token) - 1);
                token[sizeof(token) - 1] = '\0';
                len = (size_t)snprintf(msg, sizeof(msg), "/hostile") + 1;
                memcpy(msg + len, token, sizeof(token));
                CHECK(raw_send(fd, XS_WATCH, 1, msg, (uint32_t)(len + sizeof(token))));
                usleep(100 * 1000);
                for (int i = 0; i < 1000; i++)
                        if (!wr(h, XBT_NULL, "/hostile/ok", "again"))
                                break;
                CHECK(rd_is(h, XBT_NULL, "/hostile/ok", "again"));
                CHECK(raw_sees_eof(fd, 3000));
        }
        close(fd);

        /* A client sending many requests without reading replies only stalls itself. */
        fd = raw_connect();
        {
                int sent = 0;

                for (; sent < 20000; sent++) {
                        struct xsd_sockmsg m = {
                            .type = XS_READ, .req_id = (uint32_t)sent, .len = 12};
                        char pkt[sizeof(m) + 12];

                        memcpy(pkt, &m, sizeof(m));
                        memcpy(pkt + sizeof(m), "/hostile/ok", 12);
                        if (send(fd, pkt, sizeof(pkt), MSG_DONTWAIT) != (ssize_t)sizeof(pkt))
                                break;
                }
                CHECK(sent > 100);
                CHECK(rd_is(h, XBT_NULL, "/hostile/ok", "again"));
                /* It still gets its replies in order once it reads. */
                CHECK(raw_reply(fd, &rh, body, sizeof(body)) && rh.type == XS_READ &&
                      rh.req_id == 0 && rh.len == 5);
        }
        close(fd);

        /* Connection limit: extra connections are closed, existing ones unharmed. */
        {
                int fds[SIMXS_MAX_CONNS + 8];
                bool seen[SIMXS_MAX_CONNS + 8] = {false};
                int n = 0, closed = 0;

                for (; n < SIMXS_MAX_CONNS + 8; n++)
                        fds[n] = raw_connect();
                for (int round = 0; round < 50 && closed < 8; round++) {
                        usleep(100 * 1000);
                        for (int i = 0; i < n; i++) {
                                struct pollfd pfd = {.fd = fds[i], .events = POLLIN};
                                char c;

                                if (!seen[i] && poll(&pfd, 1, 0) > 0 && read(fds[i], &c, 1) == 0) {
                                        seen[i] = true;
                                        closed++;
                                }
                        }
                }
                CHECK(closed >= 8);
                for (int i = 0; i < n; i++)
                        close(fds[i]);
        }
        CHECK(rd_is(h, XBT_NULL, "/hostile/ok", "again"));
        CHECK(xs_rm(h, XBT_NULL, "/hostile"));
        xs_close(h);
}

int main(void)
{
        char dir[] = "/tmp/test-simxs-XXXXXX";
        struct simxs *s;

        check_context = check_errno;
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        snprintf(sock_path, sizeof(sock_path), "%s/socket", dir);
        s = simxs_start_log(sock_path, getenv("SIMXS_LOG") ? stderr : NULL);
        if (!s) {
                perror("simxs_start");
                return 1;
        }
        setenv("XENSTORED_PATH", sock_path, 1);

        test_basic();
        test_perms();
        test_watches();
        test_transactions();
        test_hostile();

        simxs_stop(s);
        CHECK(access(sock_path, F_OK) != 0); /* socket removed */
        simxs_stop(NULL);
        rmdir(dir);
        return check_result("test-simxs");
}
