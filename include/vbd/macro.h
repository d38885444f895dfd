/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Small macros every part of vbd uses: the core, the drivers and the tests.
 * Header-only, no dependencies beyond the C library.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* The number of elements of an array (not a pointer: that fails to build). */
#define VBD_ARRAY_SIZE(a)                                                                          \
        (sizeof(a) / sizeof((a)[0]) +                                                              \
         0 * sizeof(struct {                                                                       \
                 _Static_assert(!__builtin_types_compatible_p(__typeof__(a), __typeof__(&(a)[0])), \
                                "VBD_ARRAY_SIZE of a pointer");                                    \
                 int dummy;                                                                        \
         }))

/* The structure of type type whose member member is at ptr. */
#define vbd_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline bool vbd_is_pow2(uint64_t v)
{
        return v != 0 && (v & (v - 1)) == 0;
}

/* v rounded up to a multiple of align (a power of two). */
static inline uint64_t vbd_align_up(uint64_t v, uint64_t align)
{
        return (v + align - 1) & ~(align - 1);
}

/* Cleanup attributes (systemd's _cleanup_): free the variable at scope exit. */
static inline void vbd_freep(void *p)
{
        free(*(void **)p);
}
#define _vbd_cleanup_free_ __attribute__((cleanup(vbd_freep)))
