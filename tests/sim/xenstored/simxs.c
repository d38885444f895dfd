/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A small xenstore server on a unix socket (see simxs.h): connections,
 * wire protocol, watches and transactions.  The node tree is simxs-store.c.
 *
 * Everything runs on one thread: a poll() loop over non-blocking sockets,
 * each connection with a fixed input buffer (one header + the largest
 * payload, twice) and a bounded output queue.
 *
 * Transactions work on a private copy of the tree and remember every path
 * they touched with the generation it had when first touched (0: absent).
 * Commit fails with EAGAIN if any of those changed in the live tree since;
 * otherwise the touched paths are copied into the live tree, firing watches.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <xen/io/xs_wire.h>

#include "simxs.h"
#include "simxs-store.h"
#include "vbd/macro.h"

#define HDR_SIZE           sizeof(struct xsd_sockmsg)
#define IN_CAP             (2 * (HDR_SIZE + XENSTORE_PAYLOAD_MAX))
#define MSGS_PER_ROUND     64
#define RELEASED_MAX       1024
#define DOMID_MAX          0x7fef /* below DOMID_FIRST_RESERVED */
#define PATH_PREFIX_DOMAIN "/local/domain/"

struct watch {
        struct watch *next;
        char *orig;     /* the path as the client gave it (event path on registration) */
        char *abs;      /* canonical: absolute path or "@..." */
        size_t rel_off; /* relative watch: bytes of "/local/domain/N/" to strip */
        char *token;
};

struct access {
        char *path;
        uint64_t gen; /* generation in the live tree when first touched, 0 = absent */
        bool modified;
};

struct tx {
        struct tx *next;
        uint32_t id;
        struct simxs_tree tree;
        struct simxs_count *start_counts;
        uint32_t nr_start_counts;
        struct access *acc;
        uint32_t nr_acc, acc_cap;
};

struct conn {
        struct conn *next;
        int fd;
        unsigned id; /* for the log */
        uint32_t domid;
        bool priv;
        bool dead;    /* close at the end of this round */
        bool closing; /* protocol violation: flush the error, then close */
        uint8_t in[IN_CAP];
        size_t in_len;
        char *out;
        size_t out_head, out_len, out_cap;
        struct watch *watches;
        unsigned nr_watches;
        struct tx *txs;
        unsigned nr_txs;
};

struct change {
        char *path;
        struct simxs_perm *perms; /* NULL for @special */
        uint32_t nr_perms;
        bool recurse; /* removal: watches below path fire too */
};

struct simxs {
        int listen_fd;
        int stop_pipe[2];
        char *path;
        FILE *log;
        pthread_t thread;
        bool thread_started;
        struct conn *conns;
        unsigned nr_conns, next_conn_id;
        struct simxs_tree tree;
        uint64_t gen;
        uint32_t next_tx;
        struct change *changes;
        size_t nr_changes, changes_cap;
        uint32_t released[RELEASED_MAX];
        unsigned nr_released;
        struct req *req;
};

struct req {
        struct simxs *s;
        struct conn *c;
        struct xsd_sockmsg hdr;
        char body[XENSTORE_PAYLOAD_MAX + 1]; /* payload, plus a nul of ours */
        struct tx *tx;
        struct simxs_tree *t; /* tx ? &tx->tree : &s->tree */
        char reply[XENSTORE_PAYLOAD_MAX];
        size_t reply_len;
        struct watch *new_watch; /* fire once after the reply */
};

static const char *const type_names[] = {
    [XS_CONTROL] = "CONTROL",
    [XS_DIRECTORY] = "DIRECTORY",
    [XS_READ] = "READ",
    [XS_GET_PERMS] = "GET_PERMS",
    [XS_WATCH] = "WATCH",
    [XS_UNWATCH] = "UNWATCH",
    [XS_TRANSACTION_START] = "TRANSACTION_START",
    [XS_TRANSACTION_END] = "TRANSACTION_END",
    [XS_INTRODUCE] = "INTRODUCE",
    [XS_RELEASE] = "RELEASE",
    [XS_GET_DOMAIN_PATH] = "GET_DOMAIN_PATH",
    [XS_WRITE] = "WRITE",
    [XS_MKDIR] = "MKDIR",
    [XS_RM] = "RM",
    [XS_SET_PERMS] = "SET_PERMS",
    [XS_WATCH_EVENT] = "WATCH_EVENT",
    [XS_ERROR] = "ERROR",
    [XS_IS_DOMAIN_INTRODUCED] = "IS_DOMAIN_INTRODUCED",
    [XS_RESUME] = "RESUME",
    [XS_SET_TARGET] = "SET_TARGET",
    [XS_RESET_WATCHES] = "RESET_WATCHES",
    [XS_DIRECTORY_PART] = "DIRECTORY_PART",
};

static const char *type_name(uint32_t type)
{
        if (type < VBD_ARRAY_SIZE(type_names) && type_names[type])
                return type_names[type];
        return "?";
}

static const char *errno_name(int err)
{
        for (size_t i = 0; i < VBD_ARRAY_SIZE(xsd_errors); i++)
                if (xsd_errors[i].errnum == err)
                        return xsd_errors[i].errstring;
        return "EINVAL";
}

static void slog(struct simxs *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void slog(struct simxs *s, const char *fmt, ...)
{
        va_list ap;

        if (!s->log)
                return;
        va_start(ap, fmt);
        vfprintf(s->log, fmt, ap);
        va_end(ap);
        fflush(s->log);
}

/* ---- output ---- */

static void conn_kill(struct simxs *s, struct conn *c, const char *why)
{
        if (!c->dead)
                slog(s, "simxs: conn %u dom %u: disconnected: %s\n", c->id, c->domid, why);
        c->dead = true;
}

static void queue_msg(struct simxs *s, struct conn *c, uint32_t type, uint32_t req_id,
                      uint32_t tx_id, const void *a, size_t alen, const void *b, size_t blen)
{
        struct xsd_sockmsg hdr = {
            .type = type, .req_id = req_id, .tx_id = tx_id, .len = (uint32_t)(alen + blen)};
        size_t need = HDR_SIZE + alen + blen;

        if (c->dead)
                return;
        if (c->out_len + need > SIMXS_OUT_HARD) {
                conn_kill(s, c, "output queue full (client does not read)");
                return;
        }
        if (c->out_head && c->out_head + c->out_len + need > c->out_cap) {
                memmove(c->out, c->out + c->out_head, c->out_len);
                c->out_head = 0;
        }
        if (c->out_head + c->out_len + need > c->out_cap) {
                size_t cap = c->out_cap ? c->out_cap : 8192;
                char *o;

                while (cap < c->out_len + need)
                        cap *= 2;
                o = realloc(c->out, cap);
                if (!o) {
                        conn_kill(s, c, "out of memory");
                        return;
                }
                c->out = o;
                c->out_cap = cap;
        }
        char *p = c->out + c->out_head + c->out_len;

        memcpy(p, &hdr, HDR_SIZE);
        if (alen)
                memcpy(p + HDR_SIZE, a, alen);
        if (blen)
                memcpy(p + HDR_SIZE + alen, b, blen);
        c->out_len += need;
}

static void conn_flush(struct simxs *s, struct conn *c)
{
        while (!c->dead && c->out_len) {
                ssize_t n = send(c->fd, c->out + c->out_head, c->out_len, MSG_NOSIGNAL);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN && errno != EWOULDBLOCK)
                                conn_kill(s, c, "write error");
                        return;
                }
                c->out_head += (size_t)n;
                c->out_len -= (size_t)n;
        }
        if (!c->out_len)
                c->out_head = 0;
        if (c->closing && !c->out_len)
                conn_kill(s, c, "protocol violation");
}

/* ---- watches ---- */

static void watch_free(struct watch *w)
{
        if (!w)
                return;
        free(w->orig);
        free(w->abs);
        free(w->token);
        free(w);
}

static void queue_event(struct simxs *s, struct conn *c, const char *path, const char *token)
{
        size_t plen = strlen(path) + 1, tlen = strlen(token) + 1;

        /* A long token with a long path below the watch: never send more than a payload. */
        if (plen + tlen > XENSTORE_PAYLOAD_MAX) {
                slog(s, "simxs: conn %u dom %u: watch event too long, dropped\n", c->id, c->domid);
                return;
        }
        queue_msg(s, c, XS_WATCH_EVENT, 0, 0, path, plen, token, tlen);
}

static void fire_change(struct simxs *s, const struct change *ch)
{
        for (struct conn *c = s->conns; c; c = c->next) {
                if (c->dead)
                        continue;
                for (struct watch *w = c->watches; w; w = w->next) {
                        const char *ev = NULL;

                        if (ch->path[0] == '@') {
                                if (strcmp(w->abs, ch->path) == 0)
                                        ev = ch->path;
                        } else if (simxs_path_is_under(w->abs, ch->path)) {
                                ev = ch->path + w->rel_off;
                        } else if (ch->recurse && simxs_path_is_under(ch->path, w->abs)) {
                                ev = w->orig;
                        }
                        if (!ev)
                                continue;
                        /* Only watchers allowed to read the node hear of it. */
                        if (ch->perms &&
                            !(simxs_perm_for(ch->perms, ch->nr_perms, c->domid, c->priv) &
                              SIMXS_PERM_READ))
                                continue;
                        queue_event(s, c, ev, w->token);
                }
        }
}

static void fire_pending(struct simxs *s)
{
        for (size_t i = 0; i < s->nr_changes; i++) {
                fire_change(s, &s->changes[i]);
                free(s->changes[i].path);
                free(s->changes[i].perms);
        }
        s->nr_changes = 0;
}

/* Remember a change of the live tree; watches fire after the reply is queued. */
static int note_change(struct req *r, const char *path, const struct simxs_perm *perms,
                       uint32_t nr_perms, bool recurse)
{
        struct simxs *s = r->s;
        struct change ch = {.recurse = recurse, .nr_perms = nr_perms};

        if (r->tx)
                return 0;
        if (s->nr_changes == s->changes_cap) {
                size_t cap = s->changes_cap ? s->changes_cap * 2 : 16;
                struct change *a = realloc(s->changes, cap * sizeof(*a));

                if (!a)
                        return -ENOMEM;
                s->changes = a;
                s->changes_cap = cap;
        }
        ch.path = strdup(path);
        if (perms) {
                ch.perms = malloc(nr_perms * sizeof(*perms));
                if (ch.perms)
                        memcpy(ch.perms, perms, nr_perms * sizeof(*perms));
        }
        if (!ch.path || (perms && !ch.perms)) {
                free(ch.path);
                free(ch.perms);
                return -ENOMEM;
        }
        s->changes[s->nr_changes++] = ch;
        return 0;
}

/* ---- transactions ---- */

static void tx_free(struct tx *t)
{
        if (!t)
                return;
        simxs_tree_done(&t->tree);
        for (uint32_t i = 0; i < t->nr_acc; i++)
                free(t->acc[i].path);
        free(t->acc);
        free(t->start_counts);
        free(t);
}

static void conn_drop_tx(struct conn *c, struct tx *t)
{
        for (struct tx **pp = &c->txs; *pp; pp = &(*pp)->next) {
                if (*pp == t) {
                        *pp = t->next;
                        c->nr_txs--;
                        break;
                }
        }
        tx_free(t);
}

static struct access *tx_find(struct tx *t, const char *path)
{
        for (uint32_t i = 0; i < t->nr_acc; i++)
                if (strcmp(t->acc[i].path, path) == 0)
                        return &t->acc[i];
        return NULL;
}

/* Record that the transaction touches path (n: its node in the tx tree, or NULL). */
static int tx_touch(struct req *r, const char *path, const struct simxs_node *n, bool modified)
{
        struct tx *t = r->tx;
        struct access *a;

        if (!t)
                return 0;
        a = tx_find(t, path);
        if (!a) {
                if (t->nr_acc >= SIMXS_TX_NODES)
                        return -ENOSPC;
                if (t->nr_acc == t->acc_cap) {
                        uint32_t cap = t->acc_cap ? t->acc_cap * 2 : 16;
                        struct access *v = realloc(t->acc, cap * sizeof(*v));

                        if (!v)
                                return -ENOMEM;
                        t->acc = v;
                        t->acc_cap = cap;
                }
                a = &t->acc[t->nr_acc];
                a->path = strdup(path);
                if (!a->path)
                        return -ENOMEM;
                a->gen = n ? n->gen : 0;
                a->modified = false;
                t->nr_acc++;
        }
        a->modified |= modified;
        return 0;
}

static unsigned subtree_size(const struct simxs_node *n)
{
        unsigned k = 1;

        for (uint32_t i = 0; i < n->nr_kids; i++)
                k += subtree_size(n->kids[i]);
        return k;
}

static int tx_touch_subtree(struct req *r, char *path, size_t len, const struct simxs_node *n)
{
        int rc = tx_touch(r, path, n, true);

        for (uint32_t i = 0; rc == 0 && i < n->nr_kids; i++) {
                size_t kl = strlen(n->kids[i]->name);
                size_t sep = len > 1 ? 1 : 0;

                if (len + sep + kl >= SIMXS_PATH_BUF)
                        return -EINVAL;
                if (sep)
                        path[len] = '/';
                memcpy(path + len + sep, n->kids[i]->name, kl + 1);
                rc = tx_touch_subtree(r, path, len + sep + kl, n->kids[i]);
                path[len] = '\0';
        }
        return rc;
}

static int cmp_depth(const void *a, const void *b)
{
        unsigned da = simxs_path_depth(((const struct access *)a)->path);
        unsigned db = simxs_path_depth(((const struct access *)b)->path);

        return da < db ? -1 : da > db;
}

static void parent_path(const char *path, char *out)
{
        const char *slash = strrchr(path, '/');
        size_t len = slash && slash != path ? (size_t)(slash - path) : 1;

        memcpy(out, path, len);
        out[len] = '\0';
}

static int tx_commit(struct req *r, struct tx *t)
{
        struct simxs *s = r->s;
        struct simxs_tree *live = &s->tree;
        char ppath[SIMXS_PATH_BUF];
        int rc;

        for (uint32_t i = 0; i < t->nr_acc; i++) {
                struct simxs_node *m = simxs_tree_lookup(live, t->acc[i].path);

                if ((m ? m->gen : 0) != t->acc[i].gen)
                        return -EAGAIN;
        }
        if (!r->c->priv) {
                uint32_t dom = r->c->domid;
                uint32_t before = simxs_counts_get(t->start_counts, t->nr_start_counts, dom);
                uint32_t after = simxs_tree_count(&t->tree, dom);

                if (after > before &&
                    simxs_tree_count(live, dom) + (after - before) > SIMXS_NODES_PER_DOMAIN)
                        return -ENOSPC;
        }

        /* Parents before children, so that created nodes find their parent. */
        qsort(t->acc, t->nr_acc, sizeof(*t->acc), cmp_depth);
        r->tx = NULL; /* changes below are to the live tree */
        r->t = live;
        for (uint32_t i = 0; i < t->nr_acc; i++) {
                const struct access *a = &t->acc[i];
                struct simxs_node *c = simxs_tree_lookup(&t->tree, a->path);
                struct simxs_node *m = simxs_tree_lookup(live, a->path);

                if (c && !m) {
                        struct simxs_node *pm;

                        parent_path(a->path, ppath);
                        pm = simxs_tree_lookup(live, ppath);
                        if (!pm)
                                continue; /* cannot happen: parent was touched too */
                        rc = simxs_tree_add_child(live, pm, c->name, c->value, c->value_len,
                                                  c->perms, c->nr_perms, NULL);
                        if (rc == 0)
                                rc = note_change(r, a->path, c->perms, c->nr_perms, false);
                } else if (!c && m) {
                        rc = note_change(r, a->path, m->perms, m->nr_perms, true);
                        simxs_tree_remove(live, m);
                } else if (c && m && a->modified) {
                        rc = simxs_tree_set_value(live, m, c->value, c->value_len);
                        if (rc == 0 &&
                            (c->nr_perms != m->nr_perms ||
                             memcmp(c->perms, m->perms, c->nr_perms * sizeof(*c->perms))))
                                rc = simxs_tree_set_perms(live, m, c->perms, c->nr_perms);
                        if (rc == 0)
                                rc = note_change(r, a->path, m->perms, m->nr_perms, false);
                } else {
                        rc = 0;
                }
                if (rc < 0)
                        return rc; /* out of memory: partially applied */
        }
        return 0;
}

/* ---- requests ---- */

static bool conn_is_domain(const struct conn *c, uint32_t domid)
{
        return !c->priv && c->domid == domid;
}

static bool domain_released(const struct simxs *s, uint32_t domid)
{
        for (unsigned i = 0; i < s->nr_released; i++)
                if (s->released[i] == domid)
                        return true;
        return false;
}

/* Exactly n nul-terminated strings make up the payload. */
static int get_strings(struct req *r, const char **argv, unsigned n)
{
        size_t off = 0;

        for (unsigned i = 0; i < n; i++) {
                const char *nul;

                if (off >= r->hdr.len)
                        return -EINVAL;
                nul = memchr(r->body + off, '\0', r->hdr.len - off);
                if (!nul)
                        return -EINVAL;
                argv[i] = r->body + off;
                off = (size_t)(nul - r->body) + 1;
        }
        return off == r->hdr.len ? 0 : -EINVAL;
}

static int parse_domid(const char *s, uint32_t *ret)
{
        unsigned long v;
        char *end;

        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || *end || v > DOMID_MAX)
                return -EINVAL;
        *ret = (uint32_t)v;
        return 0;
}

static int reply_str(struct req *r, const char *str)
{
        size_t len = strlen(str) + 1;

        if (len > sizeof(r->reply))
                return -E2BIG;
        memcpy(r->reply, str, len);
        r->reply_len = len;
        return 0;
}

static int ack(struct req *r)
{
        return reply_str(r, "OK");
}

static uint32_t perm_of(const struct req *r, const struct simxs_node *n)
{
        return simxs_perm_for(n->perms, n->nr_perms, r->c->domid, r->c->priv);
}

static int canon(struct req *r, const char *in, char *out)
{
        size_t rel_off;

        return simxs_path_canon(in, r->c->domid, false, out, &rel_off);
}

/*
 * The node at path, if conn has perm on it.  Missing nodes give ENOENT, or
 * EACCES when the nearest existing ancestor lacks perm (as xenstored: no
 * probing of what one may not see).
 */
static int get_node(struct req *r, const char *path, uint32_t perm, struct simxs_node **ret)
{
        struct simxs_node *n = simxs_tree_lookup(r->t, path);
        int rc;

        if (n) {
                if ((perm_of(r, n) & perm) != perm)
                        return -EACCES;
                rc = tx_touch(r, path, n, false);
                if (rc < 0)
                        return rc;
                *ret = n;
                return 0;
        }
        n = simxs_tree_nearest(r->t, path);
        if ((perm_of(r, n) & perm) != perm)
                return -EACCES;
        rc = tx_touch(r, path, NULL, false);
        return rc < 0 ? rc : -ENOENT;
}

/* Create path (missing), checking write access on the nearest existing ancestor. */
static int create_path(struct req *r, const char *path, const void *value, uint32_t value_len)
{
        struct simxs_node *a = simxs_tree_nearest(r->t, path);
        char prefix[SIMXS_PATH_BUF];
        struct simxs_node *n;
        unsigned add = 0;
        int rc;

        if (!(perm_of(r, a) & SIMXS_PERM_WRITE))
                return -EACCES;
        /* Touch the nearest existing ancestor and each node to create. */
        for (const char *p = path + 1;; p++) {
                if (*p == '/' || *p == '\0') {
                        size_t len = (size_t)(p - path);

                        memcpy(prefix, path, len);
                        prefix[len] = '\0';
                        n = simxs_tree_lookup(r->t, prefix);
                        if (!n) {
                                if (add == 0) {
                                        char pp[SIMXS_PATH_BUF];

                                        parent_path(prefix, pp);
                                        rc = tx_touch(r, pp, simxs_tree_lookup(r->t, pp), false);
                                        if (rc < 0)
                                                return rc;
                                }
                                rc = tx_touch(r, prefix, NULL, true);
                                if (rc < 0)
                                        return rc;
                                add++;
                        }
                        if (*p == '\0')
                                break;
                }
        }
        if (!r->c->priv && simxs_tree_count(r->t, r->c->domid) + add > SIMXS_NODES_PER_DOMAIN)
                return -ENOSPC;
        rc = simxs_tree_create(r->t, path, r->c->domid, r->c->priv, value, value_len, &n);
        if (rc < 0)
                return rc;
        return note_change(r, path, n->perms, n->nr_perms, false);
}

static int do_read(struct req *r)
{
        char path[SIMXS_PATH_BUF];
        const char *arg;
        struct simxs_node *n;
        int rc;

        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = canon(r, arg, path)) < 0 ||
            (rc = get_node(r, path, SIMXS_PERM_READ, &n)) < 0)
                return rc;
        if (n->value_len > sizeof(r->reply))
                return -E2BIG;
        if (n->value_len)
                memcpy(r->reply, n->value, n->value_len);
        r->reply_len = n->value_len;
        return 0;
}

static int do_write(struct req *r)
{
        char path[SIMXS_PATH_BUF];
        const char *nul = memchr(r->body, '\0', r->hdr.len);
        const char *value;
        uint32_t value_len;
        struct simxs_node *n;
        int rc;

        if (!nul)
                return -EINVAL;
        value = nul + 1;
        value_len = (uint32_t)(r->hdr.len - (size_t)(value - r->body));
        if (!r->c->priv && value_len > SIMXS_VALUE_MAX_DOMU)
                return -ENOSPC;
        if ((rc = canon(r, r->body, path)) < 0)
                return rc;
        rc = get_node(r, path, SIMXS_PERM_WRITE, &n);
        if (rc == -ENOENT)
                rc = create_path(r, path, value, value_len);
        else if (rc == 0 && (rc = tx_touch(r, path, n, true)) == 0 &&
                 (rc = simxs_tree_set_value(r->t, n, value, value_len)) == 0)
                rc = note_change(r, path, n->perms, n->nr_perms, false);
        return rc < 0 ? rc : ack(r);
}

static int do_mkdir(struct req *r)
{
        char path[SIMXS_PATH_BUF];
        const char *arg;
        struct simxs_node *n;
        int rc;

        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = canon(r, arg, path)) < 0)
                return rc;
        rc = get_node(r, path, SIMXS_PERM_WRITE, &n);
        if (rc == -ENOENT)
                rc = create_path(r, path, NULL, 0);
        return rc < 0 ? rc : ack(r);
}

static int do_rm(struct req *r)
{
        char path[SIMXS_PATH_BUF], pp[SIMXS_PATH_BUF];
        const char *arg;
        struct simxs_node *n, *parent;
        int rc;

        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = canon(r, arg, path)) < 0)
                return rc;
        if (strcmp(path, "/") == 0)
                return -EINVAL;
        rc = get_node(r, path, SIMXS_PERM_WRITE, &n);
        if (rc == -ENOENT) {
                /* Removing what is not there is fine if the parent exists. */
                parent_path(path, pp);
                return simxs_tree_lookup(r->t, pp) ? ack(r) : -ENOENT;
        }
        if (rc < 0)
                return rc;
        if (r->tx) {
                if (r->tx->nr_acc + subtree_size(n) + 1 > SIMXS_TX_NODES)
                        return -ENOSPC;
                parent_path(path, pp);
                parent = simxs_tree_lookup(r->t, pp);
                if ((rc = tx_touch(r, pp, parent, false)) < 0 ||
                    (rc = tx_touch_subtree(r, path, strlen(path), n)) < 0)
                        return rc;
        }
        if ((rc = note_change(r, path, n->perms, n->nr_perms, true)) < 0)
                return rc;
        simxs_tree_remove(r->t, n);
        return ack(r);
}

static int do_get_perms(struct req *r)
{
        char path[SIMXS_PATH_BUF];
        const char *arg;
        struct simxs_node *n;
        int rc;

        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = canon(r, arg, path)) < 0 ||
            (rc = get_node(r, path, SIMXS_PERM_READ, &n)) < 0)
                return rc;
        r->reply_len = 0;
        for (uint32_t i = 0; i < n->nr_perms; i++) {
                char buf[16];
                int len = simxs_perm_format(&n->perms[i], buf) + 1;

                if (r->reply_len + (size_t)len > sizeof(r->reply))
                        return -E2BIG;
                memcpy(r->reply + r->reply_len, buf, (size_t)len);
                r->reply_len += (size_t)len;
        }
        return 0;
}

static int do_set_perms(struct req *r)
{
        char path[SIMXS_PATH_BUF];
        struct simxs_perm perms[XENSTORE_PAYLOAD_MAX / 3];
        uint32_t nr = 0;
        struct simxs_node *n;
        size_t off;
        int rc;

        if (r->hdr.len == 0 || r->body[r->hdr.len - 1] != '\0')
                return -EINVAL;
        if ((rc = canon(r, r->body, path)) < 0)
                return rc;
        for (off = strlen(r->body) + 1; off < r->hdr.len; off += strlen(r->body + off) + 1) {
                if (nr >= VBD_ARRAY_SIZE(perms))
                        return -E2BIG;
                if ((rc = simxs_perm_parse(r->body + off, &perms[nr])) < 0)
                        return rc;
                nr++;
        }
        if (nr == 0)
                return -EINVAL;
        if ((rc = get_node(r, path, SIMXS_PERM_WRITE, &n)) < 0)
                return rc;
        if (!(perm_of(r, n) & SIMXS_PERM_OWNER))
                return -EACCES;
        /* A guest may not give its nodes away. */
        if (!r->c->priv && perms[0].domid != n->perms[0].domid)
                return -EPERM;
        /* Watchers are checked against the new permissions. */
        if ((rc = tx_touch(r, path, n, true)) < 0 ||
            (rc = simxs_tree_set_perms(r->t, n, perms, nr)) < 0 ||
            (rc = note_change(r, path, n->perms, n->nr_perms, false)) < 0)
                return rc;
        return ack(r);
}

static int do_directory(struct req *r)
{
        char path[SIMXS_PATH_BUF];
        const char *arg;
        struct simxs_node *n;
        int rc;

        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = canon(r, arg, path)) < 0 ||
            (rc = get_node(r, path, SIMXS_PERM_READ, &n)) < 0)
                return rc;
        r->reply_len = 0;
        for (uint32_t i = 0; i < n->nr_kids; i++) {
                size_t len = strlen(n->kids[i]->name) + 1;

                if (r->reply_len + len > sizeof(r->reply))
                        return -E2BIG;
                memcpy(r->reply + r->reply_len, n->kids[i]->name, len);
                r->reply_len += len;
        }
        return 0;
}

/* Reply: generation, then children from byte offset; "" after the last one. */
static int do_directory_part(struct req *r)
{
        char path[SIMXS_PATH_BUF];
        const char *argv[2];
        struct simxs_node *n;
        unsigned long offset;
        size_t pos = 0;
        char *end;
        int rc, len;

        if ((rc = get_strings(r, argv, 2)) < 0 || (rc = canon(r, argv[0], path)) < 0)
                return rc;
        if (argv[1][0] < '0' || argv[1][0] > '9')
                return -EINVAL;
        errno = 0;
        offset = strtoul(argv[1], &end, 10);
        if (errno || *end)
                return -EINVAL;
        if ((rc = get_node(r, path, SIMXS_PERM_READ, &n)) < 0)
                return rc;
        len = snprintf(r->reply, sizeof(r->reply), "%llu", (unsigned long long)n->gen);
        r->reply_len = (size_t)len + 1;
        for (uint32_t i = 0; i < n->nr_kids; i++) {
                size_t klen = strlen(n->kids[i]->name) + 1;

                if (pos < offset) {
                        pos += klen;
                        if (pos > offset)
                                return -EINVAL; /* not at a name boundary */
                        continue;
                }
                /* Keep room for the final "" if this could be the last one. */
                if (r->reply_len + klen + (i + 1 == n->nr_kids) > sizeof(r->reply))
                        return 0;
                memcpy(r->reply + r->reply_len, n->kids[i]->name, klen);
                r->reply_len += klen;
                pos += klen;
        }
        if (pos < offset)
                return -EINVAL;
        r->reply[r->reply_len++] = '\0';
        return 0;
}

static int do_watch(struct req *r)
{
        struct conn *c = r->c;
        const char *argv[2];
        char path[SIMXS_PATH_BUF];
        size_t rel_off;
        struct watch *w;
        int rc;

        if ((rc = get_strings(r, argv, 2)) < 0 ||
            (rc = simxs_path_canon(argv[0], c->domid, true, path, &rel_off)) < 0)
                return rc;
        for (w = c->watches; w; w = w->next)
                if (strcmp(w->abs, path) == 0 && strcmp(w->token, argv[1]) == 0)
                        return -EEXIST;
        if (c->nr_watches >= (c->priv ? SIMXS_WATCHES_DOM0 : SIMXS_WATCHES_DOMU))
                return -E2BIG;
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->orig = strdup(argv[0]);
        w->abs = strdup(path);
        w->token = strdup(argv[1]);
        w->rel_off = rel_off;
        if (!w->orig || !w->abs || !w->token) {
                watch_free(w);
                return -ENOMEM;
        }
        w->next = c->watches;
        c->watches = w;
        c->nr_watches++;
        r->new_watch = w;
        return ack(r);
}

static int do_unwatch(struct req *r)
{
        struct conn *c = r->c;
        const char *argv[2];
        char path[SIMXS_PATH_BUF];
        size_t rel_off;
        int rc;

        if ((rc = get_strings(r, argv, 2)) < 0 ||
            (rc = simxs_path_canon(argv[0], c->domid, true, path, &rel_off)) < 0)
                return rc;
        for (struct watch **pp = &c->watches; *pp; pp = &(*pp)->next) {
                struct watch *w = *pp;

                if (strcmp(w->abs, path) == 0 && strcmp(w->token, argv[1]) == 0) {
                        *pp = w->next;
                        c->nr_watches--;
                        watch_free(w);
                        return ack(r);
                }
        }
        return -ENOENT;
}

static int do_transaction_start(struct req *r)
{
        struct conn *c = r->c;
        char buf[16];
        struct tx *t;
        int rc;

        if (r->hdr.tx_id)
                return -EBUSY;
        if (c->nr_txs >= (c->priv ? SIMXS_TX_DOM0 : SIMXS_TX_DOMU))
                return -ENOSPC;
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        rc = simxs_tree_copy(&t->tree, &r->s->tree);
        if (rc < 0) {
                free(t);
                return rc;
        }
        t->start_counts = malloc((r->s->tree.nr_counts + 1) * sizeof(*t->start_counts));
        if (!t->start_counts) {
                tx_free(t);
                return -ENOMEM;
        }
        memcpy(t->start_counts, r->s->tree.counts, r->s->tree.nr_counts * sizeof(*t->start_counts));
        t->nr_start_counts = r->s->tree.nr_counts;
        do
                t->id = ++r->s->next_tx;
        while (t->id == 0);
        t->next = c->txs;
        c->txs = t;
        c->nr_txs++;
        snprintf(buf, sizeof(buf), "%u", t->id);
        return reply_str(r, buf);
}

static int do_transaction_end(struct req *r)
{
        struct tx *t = r->tx;
        const char *arg;
        int rc;

        if (!t)
                return -ENOENT;
        if ((rc = get_strings(r, &arg, 1)) < 0)
                return rc;
        if (strcmp(arg, "T") == 0)
                rc = tx_commit(r, t);
        else if (strcmp(arg, "F") != 0)
                return -EINVAL;
        conn_drop_tx(r->c, t); /* ended, whatever the outcome */
        r->tx = NULL;
        r->t = &r->s->tree;
        return rc < 0 ? rc : ack(r);
}

static int do_get_domain_path(struct req *r)
{
        char buf[32];
        const char *arg;
        uint32_t domid;
        int rc;

        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = parse_domid(arg, &domid)) < 0)
                return rc;
        snprintf(buf, sizeof(buf), PATH_PREFIX_DOMAIN "%u", (unsigned)domid);
        return reply_str(r, buf);
}

static int do_is_domain_introduced(struct req *r)
{
        const char *arg;
        uint32_t domid;
        bool yes = false;
        int rc;

        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = parse_domid(arg, &domid)) < 0)
                return rc;
        if (domid == 0) {
                yes = true;
        } else if (!domain_released(r->s, domid)) {
                for (struct conn *c = r->s->conns; c; c = c->next)
                        if (!c->dead && conn_is_domain(c, domid))
                                yes = true;
        }
        return reply_str(r, yes ? "T" : "F");
}

static void conn_reset(struct conn *c)
{
        while (c->watches) {
                struct watch *w = c->watches;

                c->watches = w->next;
                watch_free(w);
        }
        c->nr_watches = 0;
        while (c->txs)
                conn_drop_tx(c, c->txs);
}

static int do_reset_watches(struct req *r)
{
        conn_reset(r->c);
        r->tx = NULL;
        r->t = &r->s->tree;
        return ack(r);
}

static int release_domain(struct req *r, uint32_t domid)
{
        struct simxs *s = r->s;

        if (!domain_released(s, domid)) {
                if (s->nr_released == RELEASED_MAX)
                        memmove(s->released, s->released + 1,
                                (RELEASED_MAX - 1) * sizeof(s->released[0]));
                else
                        s->nr_released++;
                s->released[s->nr_released - 1] = domid;
        }
        return note_change(r, "@releaseDomain", NULL, 0, false);
}

static int do_release(struct req *r)
{
        const char *arg;
        uint32_t domid;
        int rc;

        if (!r->c->priv)
                return -EACCES;
        if ((rc = get_strings(r, &arg, 1)) < 0 || (rc = parse_domid(arg, &domid)) < 0 ||
            (rc = release_domain(r, domid)) < 0)
                return rc;
        return ack(r);
}

/* Payload: command\0 then arguments, each nul-terminated (the last nul optional). */
static int do_control(struct req *r)
{
        struct simxs *s = r->s;
        const char *argv[4];
        unsigned argc = 0;
        size_t off = 0;
        uint32_t domid;
        int rc;

        r->body[r->hdr.len] = '\0';
        while (off < r->hdr.len) {
                if (argc == VBD_ARRAY_SIZE(argv))
                        return -EINVAL;
                argv[argc++] = r->body + off;
                off += strlen(r->body + off) + 1;
        }
        if (argc == 0)
                return -EINVAL;
        if (strcmp(argv[0], "sim-domid") == 0) {
                if (argc != 2 || (rc = parse_domid(argv[1], &domid)) < 0 || domid == 0)
                        return -EINVAL;
                if (!r->c->priv)
                        return -EACCES;
                r->c->domid = domid;
                r->c->priv = false;
                for (unsigned i = 0; i < s->nr_released; i++) {
                        if (s->released[i] == domid) {
                                s->released[i] = s->released[--s->nr_released];
                                break;
                        }
                }
                /* A guest's connection appearing is what XS_INTRODUCE would announce. */
                if ((rc = note_change(r, "@introduceDomain", NULL, 0, false)) < 0)
                        return rc;
                return ack(r);
        }
        if (strcmp(argv[0], "sim-release-domain") == 0) {
                if (argc != 2 || (rc = parse_domid(argv[1], &domid)) < 0)
                        return -EINVAL;
                if (!r->c->priv)
                        return -EACCES;
                if ((rc = release_domain(r, domid)) < 0)
                        return rc;
                return ack(r);
        }
        return -EINVAL;
}

static int dispatch(struct req *r)
{
        bool in_tx = false;

        switch (r->hdr.type) {
        case XS_READ:
        case XS_WRITE:
        case XS_MKDIR:
        case XS_RM:
        case XS_DIRECTORY:
        case XS_DIRECTORY_PART:
        case XS_GET_PERMS:
        case XS_SET_PERMS:
        case XS_TRANSACTION_END:
                in_tx = true;
                break;
        default:
                break;
        }
        r->t = &r->s->tree;
        if (in_tx && r->hdr.tx_id) {
                for (r->tx = r->c->txs; r->tx; r->tx = r->tx->next)
                        if (r->tx->id == r->hdr.tx_id)
                                break;
                if (!r->tx)
                        return -ENOENT;
                r->t = &r->tx->tree;
        }

        switch (r->hdr.type) {
        case XS_READ:
                return do_read(r);
        case XS_WRITE:
                return do_write(r);
        case XS_MKDIR:
                return do_mkdir(r);
        case XS_RM:
                return do_rm(r);
        case XS_DIRECTORY:
                return do_directory(r);
        case XS_DIRECTORY_PART:
                return do_directory_part(r);
        case XS_GET_PERMS:
                return do_get_perms(r);
        case XS_SET_PERMS:
                return do_set_perms(r);
        case XS_WATCH:
                return do_watch(r);
        case XS_UNWATCH:
                return do_unwatch(r);
        case XS_TRANSACTION_START:
                return do_transaction_start(r);
        case XS_TRANSACTION_END:
                return do_transaction_end(r);
        case XS_GET_DOMAIN_PATH:
                return do_get_domain_path(r);
        case XS_IS_DOMAIN_INTRODUCED:
                return do_is_domain_introduced(r);
        case XS_RESET_WATCHES:
                return do_reset_watches(r);
        case XS_CONTROL:
                return do_control(r);
        case XS_RELEASE:
                return do_release(r);
        case XS_INTRODUCE:
        case XS_RESUME:
        case XS_SET_TARGET:
                return r->c->priv ? -ENOSYS : -EACCES;
        default:
                return -EINVAL;
        }
}

static void log_request(struct simxs *s, const struct req *r, int rc)
{
        char arg[81];
        size_t n = 0;

        if (!s->log)
                return;
        for (size_t i = 0; i < r->hdr.len && n < sizeof(arg) - 1; i++) {
                char ch = r->body[i];

                arg[n++] = ch == '\0' ? '|' : (ch >= 0x20 && ch < 0x7f) ? ch : '?';
        }
        arg[n] = '\0';
        slog(s, "simxs: conn %u dom %u %s tx %u req %u \"%s\" -> %s\n", r->c->id, r->c->domid,
             type_name(r->hdr.type), r->hdr.tx_id, r->hdr.req_id, arg,
             rc < 0 ? errno_name(-rc) : "OK");
}

static void handle_message(struct simxs *s, struct conn *c, const struct xsd_sockmsg *hdr,
                           const uint8_t *payload)
{
        struct req *r = s->req; /* large: one per server, used by its thread only */
        int rc;

        r->s = s;
        r->c = c;
        r->hdr = *hdr;
        memcpy(r->body, payload, hdr->len);
        r->body[hdr->len] = '\0';
        r->tx = NULL;
        r->t = &s->tree;
        r->reply_len = 0;
        r->new_watch = NULL;

        rc = dispatch(r);
        log_request(s, r, rc);
        if (rc < 0) {
                const char *e = errno_name(-rc);

                queue_msg(s, c, XS_ERROR, hdr->req_id, hdr->tx_id, e, strlen(e) + 1, NULL, 0);
        } else {
                queue_msg(s, c, hdr->type, hdr->req_id, hdr->tx_id, r->reply, r->reply_len, NULL,
                          0);
        }
        /* As xenstored: a new watch fires once, right after its reply. */
        if (r->new_watch)
                queue_event(s, c, r->new_watch->orig, r->new_watch->token);
        fire_pending(s);
}

/* ---- connections and the loop ---- */

static void conn_free(struct conn *c)
{
        conn_reset(c);
        if (c->fd >= 0)
                close(c->fd);
        free(c->out);
        free(c);
}

static void conn_read(struct simxs *s, struct conn *c)
{
        ssize_t n;

        if (c->in_len == IN_CAP)
                return;
        n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
        if (n == 0) {
                conn_kill(s, c, "end of file");
        } else if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        conn_kill(s, c, "read error");
        } else {
                c->in_len += (size_t)n;
        }
}

static bool conn_may_process(const struct conn *c)
{
        return !c->dead && !c->closing && c->out_len < SIMXS_OUT_SOFT;
}

/* A whole message is buffered (or an oversized header, handled by processing). */
static bool conn_has_message(const struct conn *c)
{
        struct xsd_sockmsg hdr;

        if (c->in_len < HDR_SIZE)
                return false;
        memcpy(&hdr, c->in, HDR_SIZE);
        return hdr.len > XENSTORE_PAYLOAD_MAX || c->in_len >= HDR_SIZE + hdr.len;
}

static void conn_process(struct simxs *s, struct conn *c)
{
        size_t off = 0;

        for (int i = 0; i < MSGS_PER_ROUND && conn_may_process(c); i++) {
                struct xsd_sockmsg hdr;

                if (c->in_len - off < HDR_SIZE)
                        break;
                memcpy(&hdr, c->in + off, HDR_SIZE);
                if (hdr.len > XENSTORE_PAYLOAD_MAX) {
                        static const char e2big[] = "E2BIG";

                        slog(s, "simxs: conn %u dom %u: payload of %u bytes\n", c->id, c->domid,
                             hdr.len);
                        queue_msg(s, c, XS_ERROR, hdr.req_id, hdr.tx_id, e2big, sizeof(e2big), NULL,
                                  0);
                        c->closing = true;
                        off = c->in_len;
                        break;
                }
                if (c->in_len - off < HDR_SIZE + hdr.len)
                        break;
                handle_message(s, c, &hdr, c->in + off + HDR_SIZE);
                off += HDR_SIZE + hdr.len;
        }
        if (off) {
                memmove(c->in, c->in + off, c->in_len - off);
                c->in_len -= off;
        }
}

static void accept_conns(struct simxs *s)
{
        for (;;) {
                int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                struct conn *c, **tail;

                if (fd < 0)
                        return;
                if (s->nr_conns >= SIMXS_MAX_CONNS) {
                        slog(s, "simxs: too many connections, refusing one\n");
                        close(fd);
                        continue;
                }
                c = calloc(1, sizeof(*c));
                if (!c) {
                        close(fd);
                        continue;
                }
                c->fd = fd;
                c->id = ++s->next_conn_id;
                c->domid = 0;
                c->priv = true;
                /* Append: watch events go out in connection order. */
                for (tail = &s->conns; *tail; tail = &(*tail)->next)
                        ;
                *tail = c;
                s->nr_conns++;
                slog(s, "simxs: conn %u: connected\n", c->id);
        }
}

static void reap_conns(struct simxs *s)
{
        for (struct conn **pp = &s->conns; *pp;) {
                struct conn *c = *pp;

                if (c->dead) {
                        *pp = c->next;
                        s->nr_conns--;
                        conn_free(c);
                } else {
                        pp = &c->next;
                }
        }
}

static void *server_thread(void *arg)
{
        struct simxs *s = arg;
        struct pollfd *pfd = calloc(SIMXS_MAX_CONNS + 2, sizeof(*pfd));
        struct conn **pconn = calloc(SIMXS_MAX_CONNS + 2, sizeof(*pconn));

        if (!pfd || !pconn) {
                fprintf(stderr, "simxs: out of memory, server thread exits\n");
                free(pfd);
                free(pconn);
                return NULL;
        }
        for (;;) {
                unsigned n = 0;
                int timeout = -1;

                pfd[n++] = (struct pollfd){.fd = s->stop_pipe[0], .events = POLLIN};
                pfd[n++] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
                for (struct conn *c = s->conns; c; c = c->next) {
                        short ev = 0;

                        if (conn_may_process(c)) {
                                if (conn_has_message(c))
                                        timeout = 0;
                                else
                                        ev |= POLLIN;
                        }
                        if (c->out_len)
                                ev |= POLLOUT;
                        pconn[n] = c;
                        pfd[n++] = (struct pollfd){.fd = c->fd, .events = ev};
                }
                if (poll(pfd, n, timeout) < 0 && errno != EINTR) {
                        fprintf(stderr, "simxs: poll: %m\n");
                        break;
                }
                if (pfd[0].revents)
                        break;
                if (pfd[1].revents & POLLIN)
                        accept_conns(s);
                for (unsigned i = 2; i < n; i++) {
                        struct conn *c = pconn[i];

                        if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                                if (conn_may_process(c))
                                        conn_read(s, c);
                                else if (pfd[i].revents & (POLLHUP | POLLERR))
                                        conn_kill(s, c, "hang-up");
                        }
                        if (conn_may_process(c))
                                conn_process(s, c);
                }
                for (struct conn *c = s->conns; c; c = c->next)
                        conn_flush(s, c);
                reap_conns(s);
        }
        free(pfd);
        free(pconn);
        return NULL;
}

struct simxs *simxs_start_log(const char *socket_path, FILE *log)
{
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        struct simxs *s;
        struct stat st;
        int r;

        if (!socket_path || strlen(socket_path) >= sizeof(addr.sun_path)) {
                errno = EINVAL;
                return NULL;
        }
        s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->listen_fd = s->stop_pipe[0] = s->stop_pipe[1] = -1;
        s->log = log;
        s->path = strdup(socket_path);
        s->req = malloc(sizeof(*s->req));
        if (!s->path || !s->req)
                goto fail;
        r = simxs_tree_init(&s->tree, &s->gen);
        if (r < 0) {
                errno = -r;
                goto fail;
        }
        if (pipe2(s->stop_pipe, O_CLOEXEC) < 0)
                goto fail;
        s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->listen_fd < 0)
                goto fail;
        /* A stale socket of an earlier run is replaced; anything else is not. */
        if (lstat(socket_path, &st) == 0 && S_ISSOCK(st.st_mode))
                unlink(socket_path);
        strcpy(addr.sun_path, socket_path);
        if (bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
            listen(s->listen_fd, 64) < 0)
                goto fail;
        r = pthread_create(&s->thread, NULL, server_thread, s);
        if (r) {
                unlink(socket_path);
                errno = r;
                goto fail;
        }
        s->thread_started = true;
        return s;

fail:
        r = errno;
        simxs_stop(s);
        errno = r;
        return NULL;
}

struct simxs *simxs_start(const char *socket_path)
{
        return simxs_start_log(socket_path, NULL);
}

void simxs_stop(struct simxs *s)
{
        if (!s)
                return;
        if (s->thread_started) {
                char b = 0;

                while (write(s->stop_pipe[1], &b, 1) < 0 && errno == EINTR)
                        ;
                pthread_join(s->thread, NULL);
                unlink(s->path);
        }
        while (s->conns) {
                struct conn *c = s->conns;

                s->conns = c->next;
                conn_free(c);
        }
        for (size_t i = 0; i < s->nr_changes; i++) {
                free(s->changes[i].path);
                free(s->changes[i].perms);
        }
        free(s->changes);
        if (s->listen_fd >= 0)
                close(s->listen_fd);
        if (s->stop_pipe[0] >= 0) {
                close(s->stop_pipe[0]);
                close(s->stop_pipe[1]);
        }
        simxs_tree_done(&s->tree);
        free(s->req);
        free(s->path);
        free(s);
}
