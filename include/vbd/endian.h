/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Explicit little- and big-endian accessors for unaligned bytes: wire formats
 * (NBD is big-endian), on-disk formats (qcow2 is big-endian) and the blkif
 * ring (little-endian on every Xen host).  Named by the byte order read, so
 * one file can use both without two helpers of the same name.
 */
#pragma once

#include <endian.h>
#include <stdint.h>
#include <string.h>

#define VBD_DEFINE_ENDIAN(bits)                                                                    \
        static inline uint##bits##_t vbd_get_be##bits(const void *p)                               \
        {                                                                                          \
                uint##bits##_t v;                                                                  \
                memcpy(&v, p, sizeof(v));                                                          \
                return be##bits##toh(v);                                                           \
        }                                                                                          \
        static inline uint##bits##_t vbd_get_le##bits(const void *p)                               \
        {                                                                                          \
                uint##bits##_t v;                                                                  \
                memcpy(&v, p, sizeof(v));                                                          \
                return le##bits##toh(v);                                                           \
        }                                                                                          \
        static inline void vbd_put_be##bits(void *p, uint##bits##_t v)                             \
        {                                                                                          \
                v = htobe##bits(v);                                                                \
                memcpy(p, &v, sizeof(v));                                                          \
        }                                                                                          \
        static inline void vbd_put_le##bits(void *p, uint##bits##_t v)                             \
        {                                                                                          \
                v = htole##bits(v);                                                                \
                memcpy(p, &v, sizeof(v));                                                          \
        }

VBD_DEFINE_ENDIAN(16)
VBD_DEFINE_ENDIAN(32)
VBD_DEFINE_ENDIAN(64)
#undef VBD_DEFINE_ENDIAN
