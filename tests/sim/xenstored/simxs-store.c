/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The node tree of the simulated xenstore (see simxs-store.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xen/io/xs_wire.h>

#include "simxs-store.h"

static uint64_t next_gen(struct simxs_tree *t)
{
        return ++*t->gen;
}

static struct simxs_count *count_find(struct simxs_tree *t, uint32_t domid, bool create)
{
        for (uint32_t i = 0; i < t->nr_counts; i++)
                if (t->counts[i].domid == domid)
                        return &t->counts[i];
        if (!create)
                return NULL;
        if (t->nr_counts == t->counts_cap) {
                uint32_t cap = t->counts_cap ? t->counts_cap * 2 : 8;
                struct simxs_count *c = realloc(t->counts, cap * sizeof(*c));

                if (!c)
                        return NULL;
                t->counts = c;
                t->counts_cap = cap;
        }
        t->counts[t->nr_counts] = (struct simxs_count){.domid = domid, .nodes = 0};
        return &t->counts[t->nr_counts++];
}

uint32_t simxs_counts_get(const struct simxs_count *c, uint32_t nr, uint32_t domid)
{
        for (uint32_t i = 0; i < nr; i++)
                if (c[i].domid == domid)
                        return c[i].nodes;
        return 0;
}

uint32_t simxs_tree_count(const struct simxs_tree *t, uint32_t domid)
{
        return simxs_counts_get(t->counts, t->nr_counts, domid);
}

static void count_dec(struct simxs_tree *t, uint32_t domid)
{
        struct simxs_count *c = count_find(t, domid, false);

        if (c && c->nodes > 0)
                c->nodes--;
}

static void node_free(struct simxs_tree *t, struct simxs_node *n)
{
        if (!n)
                return;
        for (uint32_t i = 0; i < n->nr_kids; i++)
                node_free(t, n->kids[i]);
        if (t && n->nr_perms)
                count_dec(t, n->perms[0].domid);
        free(n->kids);
        free(n->perms);
        free(n->value);
        free(n->name);
        free(n);
}

static struct simxs_node *node_new(const char *name, size_t name_len, const void *value,
                                   uint32_t value_len, const struct simxs_perm *perms,
                                   uint32_t nr_perms)
{
        struct simxs_node *n = calloc(1, sizeof(*n));

        if (!n)
                return NULL;
        n->name = strndup(name, name_len);
        n->perms = malloc(nr_perms * sizeof(*perms));
        if (value_len) {
                n->value = malloc(value_len);
                if (n->value)
                        memcpy(n->value, value, value_len);
        }
        if (!n->name || !n->perms || (value_len && !n->value)) {
                node_free(NULL, n);
                return NULL;
        }
        n->value_len = value_len;
        memcpy(n->perms, perms, nr_perms * sizeof(*perms));
        n->nr_perms = nr_perms;
        return n;
}

static int node_attach(struct simxs_tree *t, struct simxs_node *parent, struct simxs_node *n)
{
        struct simxs_count *c;

        if (parent->nr_kids == parent->kids_cap) {
                uint32_t cap = parent->kids_cap ? parent->kids_cap * 2 : 4;
                struct simxs_node **k = realloc(parent->kids, cap * sizeof(*k));

                if (!k)
                        return -ENOMEM;
                parent->kids = k;
                parent->kids_cap = cap;
        }
        c = count_find(t, n->perms[0].domid, true);
        if (!c)
                return -ENOMEM;
        c->nodes++;
        parent->kids[parent->nr_kids++] = n;
        n->parent = parent;
        n->gen = next_gen(t);
        parent->gen = next_gen(t);
        return 0;
}

int simxs_tree_init(struct simxs_tree *t, uint64_t *gen)
{
        static const struct simxs_perm root_perms = {.domid = 0, .perms = 0};
        struct simxs_count *c;

        *t = (struct simxs_tree){.gen = gen};
        t->root = node_new("", 0, NULL, 0, &root_perms, 1);
        c = count_find(t, 0, true);
        if (!t->root || !c) {
                simxs_tree_done(t);
                return -ENOMEM;
        }
        c->nodes = 1;
        t->root->gen = next_gen(t);
        return 0;
}

void simxs_tree_done(struct simxs_tree *t)
{
        node_free(NULL, t->root);
        free(t->counts);
        *t = (struct simxs_tree){.gen = t->gen};
}

static struct simxs_node *node_copy(const struct simxs_node *src, struct simxs_node *parent)
{
        struct simxs_node *n;

        n = node_new(src->name, strlen(src->name), src->value, src->value_len, src->perms,
                     src->nr_perms);
        if (!n)
                return NULL;
        n->gen = src->gen;
        n->parent = parent;
        if (src->nr_kids) {
                n->kids = calloc(src->nr_kids, sizeof(*n->kids));
                if (!n->kids) {
                        node_free(NULL, n);
                        return NULL;
                }
                n->kids_cap = src->nr_kids;
        }
        for (uint32_t i = 0; i < src->nr_kids; i++) {
                n->kids[i] = node_copy(src->kids[i], n);
                if (!n->kids[i]) {
                        node_free(NULL, n);
                        return NULL;
                }
                n->nr_kids++;
        }
        return n;
}

int simxs_tree_copy(struct simxs_tree *dst, const struct simxs_tree *src)
{
        *dst = (struct simxs_tree){.gen = src->gen};
        dst->root = node_copy(src->root, NULL);
        dst->counts = malloc((src->nr_counts ? src->nr_counts : 1) * sizeof(*dst->counts));
        if (!dst->root || !dst->counts) {
                simxs_tree_done(dst);
                return -ENOMEM;
        }
        memcpy(dst->counts, src->counts, src->nr_counts * sizeof(*dst->counts));
        dst->nr_counts = dst->counts_cap = src->nr_counts;
        if (!dst->counts_cap)
                dst->counts_cap = 1;
        return 0;
}

static struct simxs_node *find_kid(const struct simxs_node *n, const char *name, size_t len)
{
        for (uint32_t i = 0; i < n->nr_kids; i++) {
                const char *k = n->kids[i]->name;

                if (strncmp(k, name, len) == 0 && k[len] == '\0')
                        return n->kids[i];
        }
        return NULL;
}

/* Walk path as far as it exists; *ret_rest points at the first missing component. */
static struct simxs_node *walk(const struct simxs_tree *t, const char *path, const char **ret_rest)
{
        struct simxs_node *n = t->root;
        const char *p = path;

        while (*p == '/')
                p++;
        while (*p) {
                const char *end = strchrnul(p, '/');
                struct simxs_node *k = find_kid(n, p, end - p);

                if (!k)
                        break;
                n = k;
                p = end;
                while (*p == '/')
                        p++;
        }
        *ret_rest = p;
        return n;
}

struct simxs_node *simxs_tree_lookup(const struct simxs_tree *t, const char *path)
{
        const char *rest;
        struct simxs_node *n = walk(t, path, &rest);

        return *rest ? NULL : n;
}

struct simxs_node *simxs_tree_nearest(const struct simxs_tree *t, const char *path)
{
        const char *rest;

        return walk(t, path, &rest);
}

unsigned simxs_path_depth(const char *path)
{
        unsigned d = 0;

        for (const char *p = path; *p; p++)
                if (*p == '/' && p[1] != '\0')
                        d++;
        return d;
}

int simxs_tree_add_child(struct simxs_tree *t, struct simxs_node *parent, const char *name,
                         const void *value, uint32_t value_len, const struct simxs_perm *perms,
                         uint32_t nr_perms, struct simxs_node **ret_node)
{
        struct simxs_node *n = node_new(name, strlen(name), value, value_len, perms, nr_perms);
        int r;

        if (!n)
                return -ENOMEM;
        r = node_attach(t, parent, n);
        if (r < 0) {
                node_free(NULL, n);
                return r;
        }
        if (ret_node)
                *ret_node = n;
        return 0;
}

int simxs_tree_create(struct simxs_tree *t, const char *path, uint32_t domid, bool priv,
                      const void *value, uint32_t value_len, struct simxs_node **ret_node)
{
        const char *p;
        struct simxs_node *n = walk(t, path, &p);

        while (*p) {
                const char *end = strchrnul(p, '/');
                bool last = *end == '\0';
                struct simxs_node *k;
                int r;

                k = node_new(p, end - p, last ? value : NULL, last ? value_len : 0, n->perms,
                             n->nr_perms);
                if (!k)
                        return -ENOMEM;
                if (!priv)
                        k->perms[0].domid = domid;
                r = node_attach(t, n, k);
                if (r < 0) {
                        node_free(NULL, k);
                        return r;
                }
                n = k;
                p = last ? end : end + 1;
        }
        if (ret_node)
                *ret_node = n;
        return 0;
}

int simxs_tree_set_value(struct simxs_tree *t, struct simxs_node *n, const void *value,
                         uint32_t value_len)
{
        char *v = NULL;

        if (value_len) {
                v = malloc(value_len);
                if (!v)
                        return -ENOMEM;
                memcpy(v, value, value_len);
        }
        free(n->value);
        n->value = v;
        n->value_len = value_len;
        n->gen = next_gen(t);
        return 0;
}

int simxs_tree_set_perms(struct simxs_tree *t, struct simxs_node *n, const struct simxs_perm *perms,
                         uint32_t nr_perms)
{
        struct simxs_perm *p;
        struct simxs_count *c;

        if (nr_perms == 0)
                return -EINVAL;
        p = malloc(nr_perms * sizeof(*p));
        c = count_find(t, perms[0].domid, true);
        if (!p || !c) {
                free(p);
                return -ENOMEM;
        }
        memcpy(p, perms, nr_perms * sizeof(*p));
        c->nodes++;
        count_dec(t, n->perms[0].domid);
        free(n->perms);
        n->perms = p;
        n->nr_perms = nr_perms;
        n->gen = next_gen(t);
        return 0;
}

void simxs_tree_remove(struct simxs_tree *t, struct simxs_node *n)
{
        struct simxs_node *parent = n->parent;

        if (!parent)
                return;
        for (uint32_t i = 0; i < parent->nr_kids; i++) {
                if (parent->kids[i] == n) {
                        memmove(&parent->kids[i], &parent->kids[i + 1],
                                (parent->nr_kids - i - 1) * sizeof(*parent->kids));
                        parent->nr_kids--;
                        break;
                }
        }
        parent->gen = next_gen(t);
        node_free(t, n);
}

uint32_t simxs_perm_for(const struct simxs_perm *perms, uint32_t nr_perms, uint32_t domid,
                        bool priv)
{
        if (priv || (nr_perms && perms[0].domid == domid))
                return SIMXS_PERM_READ | SIMXS_PERM_WRITE | SIMXS_PERM_OWNER;
        for (uint32_t i = 1; i < nr_perms; i++)
                if (perms[i].domid == domid)
                        return perms[i].perms;
        return nr_perms ? perms[0].perms : 0;
}

int simxs_perm_parse(const char *s, struct simxs_perm *ret_perm)
{
        uint32_t perms, id = 0;
        const char *p;

        switch (s[0]) {
        case 'n':
                perms = 0;
                break;
        case 'r':
                perms = SIMXS_PERM_READ;
                break;
        case 'w':
                perms = SIMXS_PERM_WRITE;
                break;
        case 'b':
                perms = SIMXS_PERM_READ | SIMXS_PERM_WRITE;
                break;
        default:
                return -EINVAL;
        }
        if (s[1] == '\0')
                return -EINVAL;
        for (p = s + 1; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                id = id * 10 + (uint32_t)(*p - '0');
                if (id > 65535)
                        return -EINVAL;
        }
        ret_perm->domid = id;
        ret_perm->perms = perms;
        return 0;
}

int simxs_perm_format(const struct simxs_perm *p, char *buf)
{
        static const char letters[4] = {'n', 'r', 'w', 'b'};

        return snprintf(buf, 16, "%c%u", letters[p->perms & 3], (unsigned)p->domid);
}

static bool valid_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '/' || c == '_' || c == '@' || c == '-';
}

static bool valid_abs(const char *path)
{
        size_t len = strlen(path);
        unsigned dom;
        int off = 0;

        if (path[0] != '/' || len > XENSTORE_ABS_PATH_MAX)
                return false;
        if (len > 1 && path[len - 1] == '/')
                return false;
        for (size_t i = 0; i < len; i++) {
                if (!valid_char(path[i]))
                        return false;
                if (path[i] == '/' && path[i + 1] == '/')
                        return false;
        }
        /* As xenstored: below a domain's home the relative limit applies. */
        if (sscanf(path, "/local/domain/%5u/%n", &dom, &off) == 1 && off > 0 &&
            len - (size_t)off > XENSTORE_REL_PATH_MAX)
                return false;
        return true;
}

int simxs_path_canon(const char *in, uint32_t domid, bool allow_special, char *out,
                     size_t *ret_rel_off)
{
        size_t len = strlen(in);

        *ret_rel_off = 0;
        if (len == 0)
                return -EINVAL;
        if (in[0] == '@') {
                if (!allow_special ||
                    (strcmp(in, "@releaseDomain") != 0 && strcmp(in, "@introduceDomain") != 0))
                        return -EINVAL;
                memcpy(out, in, len + 1);
                return 0;
        }
        if (in[0] == '/') {
                if (len > XENSTORE_ABS_PATH_MAX)
                        return -EINVAL;
                memcpy(out, in, len + 1);
        } else {
                int n;

                if (len > XENSTORE_REL_PATH_MAX)
                        return -EINVAL;
                n = snprintf(out, SIMXS_PATH_BUF, "/local/domain/%u/", (unsigned)domid);
                if (n < 0 || (size_t)n + len >= SIMXS_PATH_BUF)
                        return -EINVAL;
                memcpy(out + n, in, len + 1);
                *ret_rel_off = (size_t)n;
        }
        return valid_abs(out) ? 0 : -EINVAL;
}

bool simxs_path_is_under(const char *parent, const char *path)
{
        size_t len = strlen(parent);

        if (parent[0] != '/' || path[0] != '/')
                return false;
        if (len == 1)
                return true;
        return strncmp(parent, path, len) == 0 && (path[len] == '\0' || path[len] == '/');
}
