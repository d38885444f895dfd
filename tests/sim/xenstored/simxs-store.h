/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The node tree of the simulated xenstore: pure data, no I/O.  Used for the
 * live store and for the private copy of each transaction.
 *
 * Paths given to these functions are canonical absolute paths (checked by
 * simxs_path_canon()).  Functions returning int return 0 or -errno.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIMXS_PERM_READ  (1u << 0)
#define SIMXS_PERM_WRITE (1u << 1)
#define SIMXS_PERM_OWNER (1u << 2)

struct simxs_perm {
        uint32_t domid;
        uint32_t perms; /* SIMXS_PERM_READ | SIMXS_PERM_WRITE */
};

struct simxs_node {
        char *name; /* last path component, "" for the root */
        char *value;
        uint32_t value_len;
        struct simxs_perm *perms; /* perms[0]: owner and default for others */
        uint32_t nr_perms;
        uint64_t gen; /* changes with value, perms or the list of children */
        struct simxs_node *parent;
        struct simxs_node **kids; /* in creation order */
        uint32_t nr_kids, kids_cap;
};

struct simxs_count {
        uint32_t domid;
        uint32_t nodes;
};

struct simxs_tree {
        struct simxs_node *root;
        struct simxs_count *counts; /* nodes owned, per domain */
        uint32_t nr_counts, counts_cap;
        uint64_t *gen; /* generation counter shared by all trees of a server */
};

/* Buffer size for a canonical path (absolute or @special). */
#define SIMXS_PATH_BUF 3080

int simxs_tree_init(struct simxs_tree *t, uint64_t *gen);
void simxs_tree_done(struct simxs_tree *t);
int simxs_tree_copy(struct simxs_tree *dst, const struct simxs_tree *src);

struct simxs_node *simxs_tree_lookup(const struct simxs_tree *t, const char *path);
/* The node at path if it exists, else its nearest existing ancestor. */
struct simxs_node *simxs_tree_nearest(const struct simxs_tree *t, const char *path);
/* Number of path components: "/" 0, "/a" 1, "/a/b" 2. */
unsigned simxs_path_depth(const char *path);

/*
 * Create path and its missing ancestors; new nodes inherit their parent's
 * permissions, with the owner changed to domid when !priv.  The last node
 * gets the value, the others an empty one.
 */
int simxs_tree_create(struct simxs_tree *t, const char *path, uint32_t domid, bool priv,
                      const void *value, uint32_t value_len, struct simxs_node **ret_node);
int simxs_tree_add_child(struct simxs_tree *t, struct simxs_node *parent, const char *name,
                         const void *value, uint32_t value_len, const struct simxs_perm *perms,
                         uint32_t nr_perms, struct simxs_node **ret_node);
int simxs_tree_set_value(struct simxs_tree *t, struct simxs_node *n, const void *value,
                         uint32_t value_len);
int simxs_tree_set_perms(struct simxs_tree *t, struct simxs_node *n, const struct simxs_perm *perms,
                         uint32_t nr_perms);
/* Remove n and its subtree (n must not be the root). */
void simxs_tree_remove(struct simxs_tree *t, struct simxs_node *n);
uint32_t simxs_tree_count(const struct simxs_tree *t, uint32_t domid);
uint32_t simxs_counts_get(const struct simxs_count *c, uint32_t nr, uint32_t domid);

/* Access of domid (privileged: everything) to a node with these perms. */
uint32_t simxs_perm_for(const struct simxs_perm *perms, uint32_t nr_perms, uint32_t domid,
                        bool priv);
/* "r5" -> {5, READ}: 0 or -EINVAL. */
int simxs_perm_parse(const char *s, struct simxs_perm *ret_perm);
/* {5, READ} -> "r5"; buf of 16 bytes; returns the length without the nul. */
int simxs_perm_format(const struct simxs_perm *p, char *buf);

/*
 * Check a client path and make it canonical in out (SIMXS_PATH_BUF bytes):
 * relative paths are resolved under /local/domain/<domid>/ and *ret_rel_off
 * is set to the length of that prefix (0 for absolute paths).  Special
 * "@releaseDomain"/"@introduceDomain" are accepted only with allow_special.
 * 0 or -EINVAL.
 */
int simxs_path_canon(const char *in, uint32_t domid, bool allow_special, char *out,
                     size_t *ret_rel_off);
/* parent is path or an ancestor of path. */
bool simxs_path_is_under(const char *parent, const char *path);
