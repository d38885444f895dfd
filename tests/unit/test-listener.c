/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * util/listener.c: the client limit and the refuse hook, peer credentials,
 * a stale unix socket replaced, a live one or a file refused, the socket
 * file's mode and directory, removal on free (only of our own socket), TCP.
 */
#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "unit-test.h"
#include "util/listener.h"

struct seen {
        unsigned accepted, refused;
        int fds[8];
        int last_reason;
        struct vbd_listener_peer peer;
        int accept_ret;
};

static int on_accept(void *opaque, int fd, const struct vbd_listener_peer *peer)
{
        struct seen *s = opaque;
        int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);

        CHECK(fl >= 0 && (fl & O_NONBLOCK));
        CHECK(fdfl >= 0 && (fdfl & FD_CLOEXEC));
        s->peer = *peer;
        if (s->accept_ret < 0)
                return s->accept_ret;
        REQUIRE(s->accepted < 8);
        s->fds[s->accepted++] = fd;
        return 0;
}

static void on_refuse(void *opaque, int fd, int reason, const struct vbd_listener_peer *peer)
{
        struct seen *s = opaque;
        static const char msg[] = "too many\n";

        s->refused++;
        s->last_reason = reason;
        (void)!write(fd, msg, sizeof(msg) - 1);
}

static int connect_unix(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        REQUIRE(fd >= 0);
        REQUIRE(strlen(path) < sizeof(sa.sun_path));
        memcpy(sa.sun_path, path, strlen(path) + 1);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

/* Run the loop until nothing is pending for a moment. */
static void pump(struct ev_loop *loop)
{
        for (int i = 0; i < 20; i++) {
                ev_run(loop, EVRUN_NOWAIT);
                usleep(1000);
        }
}

/* What the refused peer reads: the hook's line, then EOF. */
static void check_refused_peer(int fd)
{
        char buf[64];
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        CHECK(poll(&p, 1, 2000) == 1);
        n = read(fd, buf, sizeof(buf));
        CHECK(n == 9 && memcmp(buf, "too many\n", 9) == 0);
        n = read(fd, buf, sizeof(buf));
        CHECK_EQ(n, 0);
}

static void test_limit_and_creds(struct ev_loop *loop)
{
        struct seen s = {0};
        char path[600];
        struct vbd_listener_config cfg = {
            .max_clients = 2, .accept = on_accept, .refuse = on_refuse, .opaque = &s};
        struct vbd_listener *l;
        struct stat st;
        int c[4];

        unit_path(path, sizeof(path), "limit.sock");
        cfg.path = path;
        l = vbd_listener_new(loop, &cfg);
        REQUIRE(l);
        REQUIRE(stat(path, &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK_EQ(st.st_mode & 07777, 0600);

        /* Not started: nobody is accepted. */
        c[0] = connect_unix(path);
        REQUIRE(c[0] >= 0);
        pump(loop);
        CHECK_EQ(s.accepted, 0);

        vbd_listener_start(l);
        pump(loop);
        CHECK_EQ(s.accepted, 1);
        CHECK(s.peer.has_cred);
        CHECK_EQ(s.peer.pid, getpid());
        CHECK_EQ(s.peer.uid, geteuid());
        CHECK_EQ(s.peer.gid, getegid());
        CHECK(strstr(s.peer.name, "uid") != NULL);

        c[1] = connect_unix(path);
        c[2] = connect_unix(path);
        REQUIRE(c[1] >= 0 && c[2] >= 0);
        pump(loop);
        CHECK_EQ(s.accepted, 2);
        CHECK_EQ(s.refused, 1);
        CHECK_EQ(s.last_reason, -EMFILE);
        CHECK_EQ(vbd_listener_clients(l), 2);
        /* One of c[1], c[2] was refused: the one that reads the line. */
        {
                struct pollfd p[2] = {{.fd = c[1], .events = POLLIN},
                                      {.fd = c[2], .events = POLLIN}};

                CHECK_EQ(poll(p, 2, 2000), 1);
                check_refused_peer(p[0].revents ? c[1] : c[2]);
        }

        /* One goes: there is room for one more, and only one. */
        close(s.fds[0]);
        vbd_listener_client_gone(l);
        CHECK_EQ(vbd_listener_clients(l), 1);
        c[3] = connect_unix(path);
        REQUIRE(c[3] >= 0);
        pump(loop);
        CHECK_EQ(s.accepted, 3);
        CHECK_EQ(s.refused, 1);

        /* The callback refusing: closed by the listener, not counted. */
        close(s.fds[1]);
        vbd_listener_client_gone(l);
        s.accept_ret = -ENOMEM;
        {
                int x = connect_unix(path);
                char b;

                REQUIRE(x >= 0);
                pump(loop);
                CHECK_EQ(vbd_listener_clients(l), 1);
                CHECK_EQ(read(x, &b, 1), 0);
                close(x);
        }

        /* Stopped: connections wait in the backlog. */
        s.accept_ret = 0;
        vbd_listener_stop(l);
        {
                int x = connect_unix(path);

                REQUIRE(x >= 0);
                pump(loop);
                CHECK_EQ(s.accepted, 3);
                vbd_listener_start(l);
                pump(loop);
                CHECK_EQ(s.accepted, 4);
                close(x);
        }

        for (unsigned i = 2; i < s.accepted; i++)
                close(s.fds[i]);
        for (int i = 0; i < 4; i++)
                close(c[i]);
        vbd_listener_free(l);
        CHECK(lstat(path, &st) < 0 && errno == ENOENT);
}

static void test_stale_and_live(struct ev_loop *loop)
{
        struct seen s = {0};
        char path[700], dir[600];
        struct vbd_listener_config cfg = {.accept = on_accept, .opaque = &s};
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        struct vbd_listener *l, *l2;
        struct stat st;
        int fd;

        /* A stale socket: bound, closed, left behind. */
        unit_path(path, sizeof(path), "stale.sock");
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        REQUIRE(fd >= 0);
        REQUIRE(strlen(path) < sizeof(sa.sun_path));
        memcpy(sa.sun_path, path, strlen(path) + 1);
        REQUIRE(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
        close(fd);
        REQUIRE(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));
        CHECK_EQ(connect_unix(path), -1);
        cfg.path = path;
        cfg.mode = 0660;
        l = vbd_listener_new(loop, &cfg);
        REQUIRE(l);
        vbd_listener_start(l);
        REQUIRE(stat(path, &st) == 0);
        CHECK_EQ(st.st_mode & 07777, 0660);
        fd = connect_unix(path);
        CHECK(fd >= 0);
        pump(loop);
        CHECK_EQ(s.accepted, 1);
        close(fd);
        close(s.fds[0]);

        /* A live one: refused, and left alone. */
        errno = 0;
        l2 = vbd_listener_new(loop, &cfg);
        CHECK(!l2);
        CHECK_EQ(errno, EADDRINUSE);
        fd = connect_unix(path);
        CHECK(fd >= 0);
        pump(loop);
        CHECK_EQ(s.accepted, 3); /* the probe of the second listener, then fd */
        close(fd);
        close(s.fds[1]);
        close(s.fds[2]);

        /* Replaced under us: free removes only its own socket. */
        REQUIRE(unlink(path) == 0);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
        vbd_listener_free(l);
        CHECK(lstat(path, &st) == 0);
        close(fd);
        (void)unlink(path);

        /* Not a socket: not replaced. */
        unit_path(path, sizeof(path), "file");
        unit_make_file(path, 10, 1);
        errno = 0;
        CHECK(!vbd_listener_new(loop, &cfg));
        CHECK_EQ(errno, EEXIST);
        CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode));

        /* make_dir: the directory is created 0700; without it bind fails. */
        unit_path(dir, sizeof(dir), "run");
        snprintf(path, sizeof(path), "%s/x.sock", dir);
        cfg.path = path;
        errno = 0;
        CHECK(!vbd_listener_new(loop, &cfg));
        CHECK_EQ(errno, ENOENT);
        cfg.make_dir = true;
        l = vbd_listener_new(loop, &cfg);
        REQUIRE(l);
        CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700);
        vbd_listener_free(l);
        CHECK(lstat(path, &st) < 0);
        (void)rmdir(dir);

        /* A path too long for sun_path. */
        {
                char longp[200];

                memset(longp, 'a', sizeof(longp) - 1);
                longp[sizeof(longp) - 1] = '\0';
                cfg.path = longp;
                cfg.make_dir = false;
                errno = 0;
                CHECK(!vbd_listener_new(loop, &cfg));
                CHECK_EQ(errno, ENAMETOOLONG);
        }
}

static void test_owner_only(struct ev_loop *loop)
{
        struct seen s = {0};
        char path[600];
        struct vbd_listener_config cfg = {
            .owner_only = true, .accept = on_accept, .refuse = on_refuse, .opaque = &s};
        struct vbd_listener *l;
        int fd;

        /* Our own uid passes (another uid needs root to test: the sim suite has it). */
        unit_path(path, sizeof(path), "owner.sock");
        cfg.path = path;
        l = vbd_listener_new(loop, &cfg);
        REQUIRE(l);
        vbd_listener_start(l);
        fd = connect_unix(path);
        REQUIRE(fd >= 0);
        pump(loop);
        CHECK_EQ(s.accepted, 1);
        CHECK_EQ(s.refused, 0);
        close(fd);
        close(s.fds[0]);
        vbd_listener_free(l);
}

static void test_tcp(struct ev_loop *loop)
{
        struct seen s = {0};
        struct vbd_listener_config cfg = {
            .host = "127.0.0.1", .port = 0, .accept = on_accept, .opaque = &s};
        struct sockaddr_in sa;
        socklen_t len = sizeof(sa);
        struct vbd_listener *l;
        int fd;

        l = vbd_listener_new(loop, &cfg);
        REQUIRE(l);
        vbd_listener_start(l);
        REQUIRE(getsockname(vbd_listener_fd(l), (struct sockaddr *)&sa, &len) == 0);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd >= 0 && connect(fd, (struct sockaddr *)&sa, len) == 0);
        pump(loop);
        CHECK_EQ(s.accepted, 1);
        CHECK(!s.peer.has_cred);
        CHECK(strncmp(s.peer.name, "127.0.0.1:", 10) == 0);
        close(fd);
        close(s.fds[0]);
        vbd_listener_free(l);

        cfg.host = "no-such-host.invalid";
        errno = 0;
        CHECK(!vbd_listener_new(loop, &cfg));
        CHECK_EQ(errno, EADDRNOTAVAIL);
}

int main(void)
{
        struct ev_loop *loop = ev_default_loop(0);

        test_limit_and_creds(loop);
        test_stale_and_live(loop);
        test_owner_only(loop);
        test_tcp(loop);
        return check_result("test-listener");
}
